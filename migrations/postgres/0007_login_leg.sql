-- What a redirecting login source needs back on the way in (its PKCE verifier and nonce),
-- sealed to the request; and whether the person approved the client before leaving for the
-- source (the consent page comes first for sources that redirect).
ALTER TABLE pending_authorizations ADD COLUMN login_leg BYTEA;
ALTER TABLE pending_authorizations ADD COLUMN consented BOOLEAN NOT NULL DEFAULT FALSE;
