-- Clients an administrator approved, and those waiting (approved_at NULL), for when the
-- registration policy says new clients need approval before anyone authorizes them.
CREATE TABLE client_approvals (
    client_id TEXT PRIMARY KEY,
    client_name TEXT,
    seen_at BIGINT NOT NULL,
    approved_at BIGINT
);
