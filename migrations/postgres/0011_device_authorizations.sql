-- RFC 8628 device authorizations: found by the hash of the device code (the client's secret)
-- or by the user code a person types in (unique while it lives). Approval stores an
-- authorization code for the person (`code_hash`), which the client's next poll redeems the
-- way a browser flow's code is redeemed; `polled_at` and `interval_secs` pace the polling.
CREATE TABLE device_authorizations (
    device_code_hash TEXT PRIMARY KEY,
    user_code TEXT NOT NULL UNIQUE,
    client_id TEXT NOT NULL,
    scopes TEXT NOT NULL,
    resource TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    interval_secs BIGINT NOT NULL,
    polled_at BIGINT,
    status TEXT NOT NULL,
    user_id TEXT,
    code_hash TEXT
);
CREATE INDEX device_authorizations_expiry ON device_authorizations (expires_at);
