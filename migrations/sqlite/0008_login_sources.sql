-- Login sources: which one signed a person in, who they are there (identities), and what a
-- source keeps for later, sealed per grant (the login context), carried from the pending
-- authorization through the code to the grant.
ALTER TABLE pending_authorizations ADD COLUMN grant_id TEXT;
ALTER TABLE pending_authorizations ADD COLUMN login_source TEXT;
ALTER TABLE pending_authorizations ADD COLUMN login_context BLOB;
ALTER TABLE auth_codes ADD COLUMN login_source TEXT;
ALTER TABLE auth_codes ADD COLUMN login_context BLOB;
ALTER TABLE grants ADD COLUMN login_source TEXT NOT NULL DEFAULT 'local';
ALTER TABLE grants ADD COLUMN login_context BLOB;
ALTER TABLE browser_sessions ADD COLUMN login_source TEXT NOT NULL DEFAULT 'local';

CREATE TABLE identities (
    source     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (source, subject)
);
CREATE INDEX identities_user ON identities(user_id);
