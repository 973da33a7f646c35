-- Every secret handed out (codes, tokens, client secrets, session ids) is stored only as its
-- SHA-256 hash (hex). Times are Unix seconds.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE clients (
    client_id                  TEXT PRIMARY KEY,
    secret_hash                TEXT,
    client_name                TEXT,
    redirect_uris              TEXT NOT NULL,  -- JSON array
    token_endpoint_auth_method TEXT NOT NULL,
    grant_types                TEXT NOT NULL,  -- space-separated
    scope                      TEXT,           -- space-separated; NULL: any configured scope
    metadata                   TEXT NOT NULL,  -- the registration response, JSON
    registered_ip              TEXT,
    created_at                 INTEGER NOT NULL,
    last_used_at               INTEGER
);

CREATE TABLE pending_authorizations (
    id             TEXT PRIMARY KEY,            -- hash of the request handle
    client_id      TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    redirect_given INTEGER NOT NULL,
    scopes         TEXT NOT NULL,
    resource       TEXT NOT NULL,
    state          TEXT,
    code_challenge TEXT NOT NULL,
    csrf_token     TEXT NOT NULL,
    -- Hash of the browser-binding cookie of the browser that started the request: the login
    -- and consent forms are accepted only from that browser (no login CSRF).
    binding_hash   TEXT NOT NULL,
    user_id        TEXT,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL
);

CREATE TABLE grants (
    id         TEXT PRIMARY KEY,
    user_id    TEXT,
    client_id  TEXT NOT NULL,
    resource   TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX grants_user ON grants(user_id);
CREATE INDEX grants_client ON grants(client_id);

CREATE TABLE auth_codes (
    code_hash      TEXT PRIMARY KEY,
    client_id      TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    redirect_given INTEGER NOT NULL,
    resource       TEXT NOT NULL,
    scopes         TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    consumed_at    INTEGER,
    grant_id       TEXT
);

CREATE TABLE access_tokens (
    token_hash TEXT PRIMARY KEY,
    grant_id   TEXT,
    client_id  TEXT NOT NULL,
    user_id    TEXT,
    resource   TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX access_tokens_grant ON access_tokens(grant_id);
CREATE INDEX access_tokens_client ON access_tokens(client_id);

CREATE TABLE refresh_tokens (
    token_hash     TEXT PRIMARY KEY,
    grant_id       TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    used_at        INTEGER,
    successor_hash TEXT,
    -- The answer given at rotation, sealed under a key derived from this token itself, so that
    -- a retry within the window gets the same successor while the store holds nothing usable.
    retry_sealed   BLOB,
    retry_until    INTEGER
);
CREATE INDEX refresh_tokens_grant ON refresh_tokens(grant_id);

CREATE TABLE consents (
    user_id      TEXT NOT NULL,
    client_id    TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    resource     TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (user_id, client_id, redirect_uri, resource, scopes)
);

CREATE TABLE browser_sessions (
    id_hash    TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE counters (
    key          TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    PRIMARY KEY (key, window_start)
);
