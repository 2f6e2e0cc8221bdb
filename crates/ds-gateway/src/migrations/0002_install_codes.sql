-- Install codes: single-use, short-lived; only the SHA-256 of a code is stored.
CREATE TABLE install_codes (
    hash        BLOB PRIMARY KEY NOT NULL,
    deployer_id TEXT NOT NULL REFERENCES deployers(id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    -- NULL until the manifest was served; a code is used at most once.
    used_at     INTEGER
);
CREATE INDEX install_codes_deployer ON install_codes(deployer_id);
