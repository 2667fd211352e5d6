-- Locations whose GoHighLevel budget is spent: none of their events is claimed before
-- `held_until` (unix milliseconds). One row per location, however long its backlog, so
-- holding a location back costs the same for 10 waiting events as for 100,000.
CREATE TABLE location_holds (
    location_id TEXT    PRIMARY KEY,
    held_until  INTEGER NOT NULL
);
