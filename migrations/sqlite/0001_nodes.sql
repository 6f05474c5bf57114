-- Nodes, their MACs (for DHCP lookups) and every provision-state transition.
CREATE TABLE nodes (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    bmc_password TEXT NOT NULL,
    provision_state TEXT NOT NULL,
    target_provision_state TEXT,
    services_status TEXT NOT NULL,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE node_macs (
    mac TEXT PRIMARY KEY,
    node_uuid TEXT NOT NULL REFERENCES nodes(uuid) ON DELETE CASCADE
);

CREATE TABLE node_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node_uuid TEXT NOT NULL REFERENCES nodes(uuid) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    input TEXT NOT NULL,
    reason TEXT NOT NULL
);

CREATE INDEX node_history_by_node ON node_history (node_uuid, id);
