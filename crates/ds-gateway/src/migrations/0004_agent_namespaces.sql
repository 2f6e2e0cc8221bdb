-- The namespaces the deployer's agent reported it is limited to (`--namespaces`),
-- comma-separated; empty: cluster-wide (or never reported).
ALTER TABLE deployers ADD COLUMN agent_namespaces TEXT NOT NULL DEFAULT '';
