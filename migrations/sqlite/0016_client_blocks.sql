-- Clients an administrator blocked: by client id, whatever kind (registered, CIMD,
-- configured). A blocked client is refused at /authorize and /token; its grants ended when
-- it was blocked.
CREATE TABLE client_blocks (
    client_id TEXT PRIMARY KEY,
    blocked_at INTEGER NOT NULL,
    reason TEXT NOT NULL
);
