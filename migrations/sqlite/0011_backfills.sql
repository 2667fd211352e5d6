-- Backfills: walks through a location's contacts and opportunities (GoHighLevel's search
-- APIs), each queueing the changes the rules want as tasks. `cursor` is where the walk
-- stands (JSON, the search's own cursor); it moves in the same transaction that queues a
-- page's tasks, so a walk cut short resumes where it stopped and queues nothing twice.
CREATE TABLE backfills (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    location_id      TEXT    NOT NULL,
    since            INTEGER,               -- unix ms: only records added since
    dry_run          BOOLEAN NOT NULL,
    phase            TEXT    NOT NULL,      -- 'contacts', 'opportunities'
    cursor           TEXT,
    state            TEXT    NOT NULL,      -- 'running', 'done', 'failed'
    total            INTEGER,               -- records GoHighLevel reported, as known
    seen             INTEGER NOT NULL DEFAULT 0,
    changed          INTEGER NOT NULL DEFAULT 0,
    queued           INTEGER NOT NULL DEFAULT 0,
    report           TEXT,                  -- JSON: per rule and user, gains and losses
    error            TEXT,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    started_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER
);
CREATE INDEX backfills_running ON backfills (state, location_id);
