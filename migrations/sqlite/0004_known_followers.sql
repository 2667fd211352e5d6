-- The `followers` list GoHighLevel last returned for a contact, to skip calls that would
-- change nothing while it is fresh.
CREATE TABLE known_followers (
    location_id TEXT    NOT NULL,
    contact_id  TEXT    NOT NULL,
    followers   TEXT    NOT NULL,   -- JSON array of user ids
    seen_at     INTEGER NOT NULL,
    PRIMARY KEY (location_id, contact_id)
);
