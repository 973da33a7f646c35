-- A person's browser sessions are listed (the console) and ended (a password change, a
-- removal) by user: without this, each of those read the whole table.
CREATE INDEX browser_sessions_user ON browser_sessions (user_id);
