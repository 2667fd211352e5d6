-- Pools (issue 21): each member's smooth-weighted-round-robin weight per location and pool
-- and the turns handed to it, so the sequence survives restarts; and away periods set
-- without editing rule files (inclusive dates, YYYY-MM-DD).
CREATE TABLE pool_turns (
    location_id TEXT    NOT NULL,
    pool        TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    current     INTEGER NOT NULL,
    handed      INTEGER NOT NULL,
    PRIMARY KEY (location_id, pool, user_id)
);
-- The member each contact was dealt, so deciding the contact again (a retry, a deferral,
-- a later event) hands out no new turn while that member is still in the pool and not away.
CREATE TABLE pool_picks (
    location_id TEXT    NOT NULL,
    pool        TEXT    NOT NULL,
    contact_id  TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    picked_at   INTEGER NOT NULL,
    PRIMARY KEY (location_id, pool, contact_id)
);
CREATE TABLE away (
    user_id   TEXT    NOT NULL,
    starts_on TEXT    NOT NULL,
    ends_on   TEXT    NOT NULL,
    set_at    INTEGER NOT NULL,
    PRIMARY KEY (user_id, starts_on, ends_on)
);
