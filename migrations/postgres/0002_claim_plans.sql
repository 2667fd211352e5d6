-- The claim walks ready events in (available_at, id) order and stops at its LIMIT, with no
-- sort of every pending event; the index must carry id for that.
DROP INDEX events_ready;
CREATE INDEX events_ready ON events (status, available_at, id);
