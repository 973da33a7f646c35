-- Settings an administrator changes while the gateway runs (the registration policy), by
-- name, as JSON. Absent: the configuration file's values apply.
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
