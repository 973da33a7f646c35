-- The vault: each person's tokens at an upstream that demands OAuth of its own, one row per
-- (user, upstream). The token set is sealed under the encryption keys with the row's identity
-- (user, upstream, issuer) as associated data, so a row copied elsewhere does not open.
-- `lease_until`: one refresh at a time per row, across instances.
CREATE TABLE upstream_tokens (
    user_id TEXT NOT NULL,
    upstream TEXT NOT NULL,
    issuer TEXT NOT NULL,
    sealed BLOB NOT NULL,
    status TEXT NOT NULL,
    scope TEXT NOT NULL,
    expires_at INTEGER,
    settings TEXT NOT NULL,
    connected_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    lease_until INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, upstream)
);

-- A connect flow under way: found by the hash of its `state`, used once, bound to the browser
-- session (by hash) that confirmed it; the PKCE verifier is sealed.
CREATE TABLE upstream_connects (
    state_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    session_hash TEXT NOT NULL,
    upstream TEXT NOT NULL,
    issuer TEXT NOT NULL,
    sealed BLOB NOT NULL,
    settings TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
