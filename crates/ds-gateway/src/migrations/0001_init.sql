-- The gateway's schema: deployers with their revision counter, tokens (hashes only),
-- admin API keys (hashes only), deployments, and the statuses agents report.

CREATE TABLE deployers (
    id            TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    -- Per-deployer revision: bumped by every change, never reset, so agents can
    -- detect gaps across gateway restarts.
    revision      INTEGER NOT NULL DEFAULT 0,
    agent_version TEXT NOT NULL DEFAULT '',
    cluster       TEXT NOT NULL DEFAULT '',
    instance      TEXT NOT NULL DEFAULT '',
    last_seen     INTEGER
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY NOT NULL,
    deployer_id TEXT NOT NULL REFERENCES deployers(id) ON DELETE CASCADE,
    hash        BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    -- NULL while current; set when rotated out (end of the overlap window).
    expires_at  INTEGER
);
CREATE INDEX tokens_deployer ON tokens(deployer_id);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY NOT NULL,
    hash       BLOB NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE deployments (
    id          TEXT PRIMARY KEY NOT NULL,
    deployer_id TEXT NOT NULL REFERENCES deployers(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    namespace   TEXT NOT NULL,
    spec        TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (deployer_id, namespace, name)
);
CREATE INDEX deployments_name ON deployments(name);

CREATE TABLE deployment_status (
    deployment_id      TEXT PRIMARY KEY NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    phase              INTEGER NOT NULL,
    ready_replicas     INTEGER NOT NULL,
    available_replicas INTEGER NOT NULL,
    updated_replicas   INTEGER NOT NULL,
    applied_revision   INTEGER NOT NULL,
    endpoint           TEXT NOT NULL,
    last_error         TEXT NOT NULL,
    updated_at         INTEGER NOT NULL
);
