-- Every change of a deployment's spec, numbered per deployment (1, 2, 3…), immutable,
-- with who made it and when; the newest ones are kept (`--revision-history`, 50).
CREATE TABLE deployment_revisions (
    deployment_id     TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    number            BIGINT NOT NULL,
    -- The deployer revision the change was made at (the deployment's
    -- revision_of_last_change then): the agent reports its status against it.
    deployer_revision BIGINT NOT NULL,
    spec              TEXT NOT NULL,
    -- Who made it: "key <API key ID>", or "" when unknown (before revisions existed).
    actor             TEXT NOT NULL,
    -- What else is to know about it, e.g. "rollback to revision 2".
    note              TEXT NOT NULL DEFAULT '',
    created_at        BIGINT NOT NULL,
    -- The status the deployment reached at this revision: the proto Phase number
    -- (Available or Failed); NULL until the agent reports one of them.
    phase             BIGINT,
    PRIMARY KEY (deployment_id, number)
);
CREATE INDEX deployment_revisions_at ON deployment_revisions(deployment_id, deployer_revision);
-- Deployments made before revisions existed: their current spec is revision 1.
INSERT INTO deployment_revisions (deployment_id, number, deployer_revision, spec, actor, note, created_at)
    SELECT id, 1, revision, spec, '', 'the spec when revisions began to be kept', updated_at
    FROM deployments;
