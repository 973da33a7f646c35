-- Keys the gateway signs identity assertions with (ES256). The newest is active; older
-- ones stay published in the JWKS until retired, so what they signed still verifies.
CREATE TABLE signing_keys (
    kid        TEXT PRIMARY KEY,
    pkcs8      BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER
);
