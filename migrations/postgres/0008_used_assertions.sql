-- Assertions (ID-JAG) already exchanged, by a hash of their issuer and `jti`, kept until they
-- expire: one is used once, on whichever instance it arrives.
CREATE TABLE used_assertions (
    id TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX used_assertions_expires_at ON used_assertions(expires_at);
