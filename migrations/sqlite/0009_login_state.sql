-- A login source that sends the browser elsewhere comes back with a `state`; its hash finds
-- the pending request again (and only once).
ALTER TABLE pending_authorizations ADD COLUMN login_state TEXT;
CREATE INDEX pending_authorizations_login_state ON pending_authorizations(login_state);
