-- The events whose combined plan one set of calls carried (coalescing); empty when alone.
ALTER TABLE decisions ADD COLUMN batch TEXT NOT NULL DEFAULT '[]';
