-- Locations whose GoHighLevel budget is spent: none of their events is claimed before
-- `held_until` (unix milliseconds, the replicas' clocks, like `available_at`). One row per
-- location, however long its backlog.
CREATE TABLE location_holds (
    location_id TEXT   PRIMARY KEY,
    held_until  BIGINT NOT NULL
);
