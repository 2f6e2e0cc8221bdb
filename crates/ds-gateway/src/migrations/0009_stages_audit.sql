-- Lifecycle stages (an ordered, editable list; each deployer is in one) and the audit
-- log of every change. Numbered 0009: 0008 belongs to the users and groups migration,
-- and sqlx applies whichever of them is missing, in any order.

CREATE TABLE stages (
    name      TEXT PRIMARY KEY NOT NULL,
    -- Sort key of the list; not unique, so that inserting in the middle can shift the
    -- positions after it in one statement.
    position  INTEGER NOT NULL,
    -- Who may create, change or delete deployments on the stage's deployers:
    -- 'anyone' with the right, or 'service-accounts' only (production through CI).
    deploy_by TEXT NOT NULL DEFAULT 'anyone' CHECK (deploy_by IN ('anyone', 'service-accounts'))
);
INSERT INTO stages (name, position) VALUES ('Development', 1), ('Test', 2), ('Production', 3);

-- Every deployer is in one stage; the ones made before stages existed are in Development.
-- No foreign key here (SQLite cannot add one with a default): the store, whose writes
-- are serialized on SQLite, checks the stage and renames deployers with their stage.
ALTER TABLE deployers ADD COLUMN stage TEXT NOT NULL DEFAULT 'Development';
CREATE INDEX deployers_stage ON deployers(stage);

-- The audit log: one row per change, written in the transaction of the change, and one
-- per refused attempt. Append-only for everyone (the triggers below); no secret is ever
-- in it (tokens, keys and install codes appear as their IDs or hash prefixes only).
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Unix milliseconds.
    at          INTEGER NOT NULL,
    -- Who: "key <API key ID>", or "unknown" for a credential that named nobody.
    actor       TEXT NOT NULL,
    -- What, e.g. "deployment.create", "stage.rename", "authenticate".
    action      TEXT NOT NULL,
    -- The kind of object ("deployer", "deployment", "stage", "api-key", "install-code",
    -- "rpc") and the object, as people name it (a name, namespace/name, a key ID).
    object_kind TEXT NOT NULL,
    object      TEXT NOT NULL,
    -- The deployer the change is of, if any (kept after the deployer is deleted).
    deployer_id TEXT,
    -- JSON of the object before and after the change; NULL for none (create, delete).
    before      TEXT,
    after       TEXT,
    -- The request's x-request-id (the client's, or one the gateway generated).
    request_id  TEXT NOT NULL DEFAULT '',
    outcome     TEXT NOT NULL CHECK (outcome IN ('ok', 'denied')),
    -- Why it was denied; a note on a change (e.g. "rollback to revision 2").
    reason      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_at ON audit_log(at);
CREATE INDEX audit_log_actor ON audit_log(actor, id);
CREATE INDEX audit_log_deployer ON audit_log(deployer_id, id);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
