-- The latest count of the deployer's objects its agent reported (StatusReport.objects)
-- and the deployer revision it counted at; NULL until an agent reports one. What
-- `ds deployer rm --cascade` waits on before it deletes the deployer.
ALTER TABLE deployers ADD COLUMN objects_revision INTEGER;
ALTER TABLE deployers ADD COLUMN objects_owned INTEGER;
