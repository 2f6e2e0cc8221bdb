-- The gateway's schema on PostgreSQL: the SQLite schema (src/gateway/migrations) in one
-- step, plus the change log that replicas read each other's changes from.
-- Timestamps are Unix milliseconds, as in SQLite, so both back ends store the same values.

CREATE TABLE deployers (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    created_at       BIGINT NOT NULL,
    -- Per-deployer revision: bumped by every change, never reset, so agents can
    -- detect gaps across gateway restarts.
    revision         BIGINT NOT NULL DEFAULT 0,
    agent_version    TEXT NOT NULL DEFAULT '',
    cluster          TEXT NOT NULL DEFAULT '',
    instance         TEXT NOT NULL DEFAULT '',
    -- The namespaces the agent reported it is limited to, comma-separated.
    agent_namespaces TEXT NOT NULL DEFAULT '',
    last_seen        BIGINT
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    deployer_id TEXT NOT NULL REFERENCES deployers(id) ON DELETE CASCADE,
    hash        BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    -- NULL while current; set when rotated out (end of the overlap window).
    expires_at  BIGINT
);
CREATE INDEX tokens_deployer ON tokens(deployer_id);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    hash       BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE deployments (
    id          TEXT PRIMARY KEY,
    deployer_id TEXT NOT NULL REFERENCES deployers(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    namespace   TEXT NOT NULL,
    spec        TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (deployer_id, namespace, name)
);
CREATE INDEX deployments_name ON deployments(name);

CREATE TABLE deployment_status (
    deployment_id      TEXT PRIMARY KEY REFERENCES deployments(id) ON DELETE CASCADE,
    phase              BIGINT NOT NULL,
    ready_replicas     BIGINT NOT NULL,
    available_replicas BIGINT NOT NULL,
    updated_replicas   BIGINT NOT NULL,
    applied_revision   BIGINT NOT NULL,
    endpoint           TEXT NOT NULL,
    last_error         TEXT NOT NULL,
    updated_at         BIGINT NOT NULL
);

-- Install codes: single-use, short-lived; only the SHA-256 of a code is stored.
CREATE TABLE install_codes (
    hash        BYTEA PRIMARY KEY,
    deployer_id TEXT NOT NULL REFERENCES deployers(id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    -- NULL until the manifest was served; a code is used at most once.
    used_at     BIGINT,
    -- JSON of gateway::install::InstallOptions.
    options     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX install_codes_deployer ON install_codes(deployer_id);

-- Every committed change of a deployer's deployments, written in the transaction that
-- bumps the revision and announced with NOTIFY: other replicas read it to feed their
-- watchers in revision order. Only the latest changes per deployer are kept; a watcher
-- further behind is told to reconnect for a fresh snapshot anyway.
CREATE TABLE changes (
    deployer_id TEXT NOT NULL REFERENCES deployers(id) ON DELETE CASCADE,
    revision    BIGINT NOT NULL,
    -- 'upsert' (payload: the deployment) or 'removal' (payload: id, namespace, name).
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    PRIMARY KEY (deployer_id, revision)
);
