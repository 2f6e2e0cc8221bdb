-- Deployment hooks and their runs: see the SQLite migration 0010 for the columns.
-- Numbered 0007: 0008 and later belong to other features, and sqlx applies whichever of
-- them is missing, in any order.

CREATE TABLE hooks (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    deployer_id TEXT NOT NULL REFERENCES deployers(id) ON DELETE CASCADE,
    phase       TEXT NOT NULL CHECK (phase IN ('pre', 'post')),
    command     TEXT,
    url         TEXT,
    timeout_ms  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    CHECK ((command IS NULL) <> (url IS NULL))
);
CREATE INDEX hooks_deployer ON hooks(deployer_id, phase);

CREATE TABLE hook_runs (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hook_id       BIGINT NOT NULL,
    deployer_id   TEXT NOT NULL REFERENCES deployers(id) ON DELETE CASCADE,
    deployment_id TEXT NOT NULL,
    deployment    TEXT NOT NULL,
    revision      BIGINT NOT NULL,
    phase         TEXT NOT NULL CHECK (phase IN ('pre', 'post')),
    target        TEXT NOT NULL,
    started_at    BIGINT NOT NULL,
    finished_at   BIGINT NOT NULL,
    outcome       TEXT NOT NULL CHECK (outcome IN ('ok', 'failed', 'timed_out', 'no_slot')),
    exit_code     BIGINT,
    output_tail   TEXT NOT NULL,
    actor         TEXT NOT NULL
);
CREATE INDEX hook_runs_deployment ON hook_runs(deployment_id, id);
