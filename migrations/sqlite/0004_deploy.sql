-- The deploy workflow's progress per node (written by the conductor, agent facts by the agent
-- API) and the hardware inventory each node's agent reported (in-band inspection).
CREATE TABLE deployments (
    node_uuid TEXT PRIMARY KEY REFERENCES nodes(uuid) ON DELETE CASCADE,
    step TEXT NOT NULL,
    step_started_at BIGINT NOT NULL,
    image TEXT NOT NULL,
    command_id BIGINT NOT NULL DEFAULT 0,
    command TEXT,
    result_id BIGINT NOT NULL DEFAULT 0,
    result_ok BIGINT NOT NULL DEFAULT 0,
    result_detail TEXT,
    agent_address TEXT,
    agent_seen_at BIGINT,
    written BIGINT NOT NULL DEFAULT 0,
    total BIGINT NOT NULL DEFAULT 0,
    rate BIGINT NOT NULL DEFAULT 0,
    progress_at BIGINT
);

CREATE TABLE node_inventory (
    node_uuid TEXT PRIMARY KEY REFERENCES nodes(uuid) ON DELETE CASCADE,
    collected_at BIGINT NOT NULL,
    data TEXT NOT NULL
);
