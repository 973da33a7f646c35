-- One lifecycle for grants: why each one ended, and the events behind each NOTIFY (kept a
-- while, so that what an instance missed while reconnecting is still on record).
ALTER TABLE grants ADD COLUMN ended_reason TEXT;

CREATE TABLE store_events (
    id         BIGSERIAL PRIMARY KEY,
    origin     TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX store_events_created ON store_events(created_at);
