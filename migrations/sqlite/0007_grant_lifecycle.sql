-- One lifecycle for grants: why each one ended, and the events other processes on this file
-- (a running gateway hearing what the CLI ended) read back.
ALTER TABLE grants ADD COLUMN ended_reason TEXT;

-- AUTOINCREMENT: ids never go back, even once every row is swept, so "id > last seen" holds.
CREATE TABLE store_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    origin     TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX store_events_created ON store_events(created_at);
