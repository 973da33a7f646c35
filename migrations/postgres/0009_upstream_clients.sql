-- The gateway's registrations as an OAuth client at upstreams' authorization servers: one per
-- (upstream, issuer), never used at another issuer; `settings` fingerprints the upstream's URL
-- and OAuth settings, so that a changed configuration does not reuse an old registration.
CREATE TABLE upstream_clients (
    upstream TEXT NOT NULL,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    client_secret BYTEA,
    method TEXT NOT NULL,
    settings TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    PRIMARY KEY (upstream, issuer)
);
