-- The rule set (content hash) a decision was made with.
ALTER TABLE decisions ADD COLUMN rules_version TEXT NOT NULL DEFAULT '';
