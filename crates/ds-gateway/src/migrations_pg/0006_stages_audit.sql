-- Lifecycle stages and the audit log: the SQLite migration 0009, plus the foreign key
-- from deployers to their stage (renames follow it; a stage with deployers cannot be
-- deleted, whatever another replica commits meanwhile). Numbered 0006: 0005 belongs to
-- the users and groups migration, and sqlx applies whichever is missing, in any order.

CREATE TABLE stages (
    name      TEXT PRIMARY KEY,
    -- Sort key of the list; not unique, so that inserting in the middle can shift the
    -- positions after it in one statement.
    position  BIGINT NOT NULL,
    -- Who may create, change or delete deployments on the stage's deployers.
    deploy_by TEXT NOT NULL DEFAULT 'anyone' CHECK (deploy_by IN ('anyone', 'service-accounts'))
);
INSERT INTO stages (name, position) VALUES ('Development', 1), ('Test', 2), ('Production', 3);

-- Every deployer is in one stage; the ones made before stages existed are in Development.
ALTER TABLE deployers ADD COLUMN stage TEXT NOT NULL DEFAULT 'Development'
    REFERENCES stages(name) ON UPDATE CASCADE;
CREATE INDEX deployers_stage ON deployers(stage);

-- The audit log: see the SQLite migration for the columns.
CREATE TABLE audit_log (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    object_kind TEXT NOT NULL,
    object      TEXT NOT NULL,
    deployer_id TEXT,
    before      TEXT,
    after       TEXT,
    request_id  TEXT NOT NULL DEFAULT '',
    outcome     TEXT NOT NULL CHECK (outcome IN ('ok', 'denied')),
    reason      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_at ON audit_log(at);
CREATE INDEX audit_log_actor ON audit_log(actor, id);
CREATE INDEX audit_log_deployer ON audit_log(deployer_id, id);

-- Append-only for every role: UPDATE, DELETE and TRUNCATE abort.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
