-- MCP sessions (Mcp-Session-Id) bound to the principal that opened them, so that nobody
-- else can use one. The id is stored only as its SHA-256.
CREATE TABLE mcp_sessions (
    upstream     TEXT NOT NULL,
    session_hash TEXT NOT NULL,
    owner        TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (upstream, session_hash)
);
