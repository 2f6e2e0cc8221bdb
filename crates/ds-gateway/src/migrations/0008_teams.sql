-- Teams: users and service accounts, API keys per user (with an optional expiry),
-- groups, and per-deployer grants of a role (view < deploy < admin) to a group.

CREATE TABLE users (
    name       TEXT PRIMARY KEY NOT NULL,
    -- 'user' (a person) or 'service-account' (a technical account, e.g. for CI).
    kind       TEXT NOT NULL CHECK (kind IN ('user', 'service-account')),
    -- A gateway admin may do everything, and alone manages users, groups and deployers.
    admin      INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
-- The built-in admin: the bootstrap key of the first start, and every key made before
-- users existed, belong to it.
INSERT INTO users (name, kind, admin, created_at)
    VALUES ('admin', 'user', 1, CAST(strftime('%s', 'now') AS INTEGER) * 1000);

-- SQLite cannot add a column with a foreign key and a non-NULL default: the table is
-- rebuilt with its rows (nothing references it).
CREATE TABLE api_keys_v2 (
    -- The public ID, shown in lists and in who made a change.
    id         TEXT PRIMARY KEY NOT NULL,
    hash       BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    user_name  TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    -- NULL: never expires.
    expires_at INTEGER
);
INSERT INTO api_keys_v2 (id, hash, created_at, user_name)
    SELECT id, hash, created_at, 'admin' FROM api_keys;
DROP TABLE api_keys;
ALTER TABLE api_keys_v2 RENAME TO api_keys;
CREATE INDEX api_keys_user ON api_keys(user_name);

CREATE TABLE user_groups (
    name       TEXT PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL
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
