-- A disabled user cannot sign in; disabling also ends their browser sessions.
ALTER TABLE users ADD COLUMN disabled_at BIGINT;
