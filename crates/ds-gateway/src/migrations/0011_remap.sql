-- Per-deployer remapping (env values and Secret names replaced in deployments created
-- on or promoted to the deployer), and what it replaced, kept with the revision it made.
-- Numbered 0011: 0010 belongs to the hooks migration, and sqlx applies whichever of them
-- is missing, in any order.

-- The deployer's map as JSON ({"env":[{name,from,to}],"secrets":[{from,to}]}); '' for none.
ALTER TABLE deployers ADD COLUMN remap TEXT NOT NULL DEFAULT '';
-- The replacements made for this revision as a JSON list of {kind,name,from,to}; '' for
-- none (every revision made before remapping existed, and every plain update).
ALTER TABLE deployment_revisions ADD COLUMN remapped TEXT NOT NULL DEFAULT '';
