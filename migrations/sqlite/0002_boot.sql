-- Boot-path timeline events, DHCP leases and the one-time agent token of a deploying node.
CREATE TABLE node_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node_uuid TEXT NOT NULL REFERENCES nodes(uuid) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX node_events_by_node ON node_events (node_uuid, id);

CREATE TABLE dhcp_leases (
    ip TEXT PRIMARY KEY,
    mac TEXT NOT NULL UNIQUE,
    node_uuid TEXT,
    expires_at BIGINT NOT NULL,
    discovered BIGINT NOT NULL DEFAULT 0
);

ALTER TABLE nodes ADD COLUMN agent_token_hash TEXT;
