-- What the gateway tells upstreams about a user besides the name: an email address and
-- groups (space-separated), used by tool rules and identity headers/assertions.
ALTER TABLE users ADD COLUMN email TEXT;
ALTER TABLE users ADD COLUMN groups TEXT NOT NULL DEFAULT '';
