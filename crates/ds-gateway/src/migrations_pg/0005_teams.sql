-- Teams: users and service accounts, API keys per user (with an optional expiry),
-- groups, and per-deployer grants of a role (view < deploy < admin) to a group.

CREATE TABLE users (
    name       TEXT PRIMARY KEY,
    -- 'user' (a person) or 'service-account' (a technical account, e.g. for CI).
    kind       TEXT NOT NULL CHECK (kind IN ('user', 'service-account')),
    -- A gateway admin may do everything, and alone manages users, groups and deployers.
    -- BIGINT 0/1 as in SQLite, so both back ends decode it alike.
    admin      BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
-- The built-in admin: the bootstrap key of the first start, and every key made before
-- users existed, belong to it.
INSERT INTO users (name, kind, admin, created_at)
    VALUES ('admin', 'user', 1, CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT));

ALTER TABLE api_keys ADD COLUMN user_name TEXT NOT NULL DEFAULT 'admin'
    REFERENCES users(name) ON DELETE CASCADE;
ALTER TABLE api_keys ALTER COLUMN user_name DROP DEFAULT;
-- NULL: never expires.
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
CREATE INDEX api_keys_user ON api_keys(user_name);

CREATE TABLE user_groups (
    name       TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

CREATE TABLE group_members (
    group_name TEXT NOT NULL REFERENCES user_groups(name) ON DELETE CASCADE,
    user_name  TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    PRIMARY KEY (group_name, user_name)
);
CREATE INDEX group_members_user ON group_members(user_name);

CREATE TABLE deployer_grants (
    deployer_id TEXT NOT NULL REFERENCES deployers(id) ON DELETE CASCADE,
    group_name  TEXT NOT NULL REFERENCES user_groups(name) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('view', 'deploy', 'admin')),
    PRIMARY KEY (deployer_id, group_name)
);
CREATE INDEX deployer_grants_group ON deployer_grants(group_name);
