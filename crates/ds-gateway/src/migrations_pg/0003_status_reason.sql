-- Why a deployment is not available, from its pods (DeploymentStatus.reason), and its
-- pods (DeploymentStatus.pods, protobuf-encoded as a DeploymentStatus holding only them).
ALTER TABLE deployment_status ADD COLUMN reason TEXT NOT NULL DEFAULT '';
ALTER TABLE deployment_status ADD COLUMN pods BYTEA NOT NULL DEFAULT '';
