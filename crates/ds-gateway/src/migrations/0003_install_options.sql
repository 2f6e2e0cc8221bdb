-- What the install link's manifest is rendered with (JSON of gateway::install::InstallOptions).
ALTER TABLE install_codes ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
