-- Deployment hooks (issue 18): per deployer, programs or URLs the gateway runs before a
-- change is stored (pre) and after the agent reports it Available or Failed (post), and
-- the record of every run. Numbered 0010: 0011 and later belong to other features, and
-- sqlx applies whichever of them is missing, in any order.

CREATE TABLE hooks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    deployer_id TEXT NOT NULL REFERENCES deployers(id) ON DELETE CASCADE,
    -- 'pre' (may refuse the change) or 'post' (told what the change reached).
    phase       TEXT NOT NULL CHECK (phase IN ('pre', 'post')),
    -- Exactly one of: an executable's file name inside the gateway's --hooks-dir, or an
    -- http(s) URL the deployment is POSTed to.
    command     TEXT,
    url         TEXT,
    -- Killed (or the request abandoned) after this long.
    timeout_ms  INTEGER NOT NULL,
    -- Unix milliseconds.
    created_at  INTEGER NOT NULL,
    -- Who added it ("alice (key <ID>)").
    created_by  TEXT NOT NULL,
    CHECK ((command IS NULL) <> (url IS NULL))
);
CREATE INDEX hooks_deployer ON hooks(deployer_id, phase);

-- Every run of a hook. No foreign key to the hook or the deployment: a run stays after
-- its hook is removed, and a refused create has no deployment. It goes with its deployer.
CREATE TABLE hook_runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    hook_id       INTEGER NOT NULL,
    deployer_id   TEXT NOT NULL REFERENCES deployers(id) ON DELETE CASCADE,
    -- Empty for a create the hook refused (no deployment was made).
    deployment_id TEXT NOT NULL,
    -- namespace/name, to name it in the audit log and when it was never created.
    deployment    TEXT NOT NULL,
    -- The deployment revision (1, 2, 3…) the change makes or made.
    revision      INTEGER NOT NULL,
    phase         TEXT NOT NULL CHECK (phase IN ('pre', 'post')),
    -- What ran: the command name or the URL, as the hook said then.
    target        TEXT NOT NULL,
    -- Unix milliseconds.
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER NOT NULL,
    outcome       TEXT NOT NULL CHECK (outcome IN ('ok', 'failed', 'timed_out', 'no_slot')),
    -- The process's exit code, or the HTTP status; NULL when there is none.
    exit_code     INTEGER,
    -- The last bytes (at most 4 KiB) of its stdout and stderr, or of the HTTP answer, or
    -- why it did not run.
    output_tail   TEXT NOT NULL,
    -- Who made the change the hook ran for.
    actor         TEXT NOT NULL
);
CREATE INDEX hook_runs_deployment ON hook_runs(deployment_id, id);
