-- Per-deployer remapping and what it replaced per revision: see the SQLite migration
-- 0011. Numbered 0008: 0007 belongs to the hooks migration, and sqlx applies whichever of
-- them is missing, in any order.
ALTER TABLE deployers ADD COLUMN remap TEXT NOT NULL DEFAULT '';
ALTER TABLE deployment_revisions ADD COLUMN remapped TEXT NOT NULL DEFAULT '';
