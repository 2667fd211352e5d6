-- Backfills: walks through a location's contacts and opportunities (GoHighLevel's search
-- APIs), each queueing the changes the rules want as tasks. `cursor` is where the walk
-- stands (JSON, the search's own cursor); it moves in the same transaction that queues a
-- page's tasks, so a walk cut short resumes where it stopped and queues nothing twice.
CREATE TABLE backfills (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    location_id      TEXT    NOT NULL,
    since            BIGINT,                -- unix ms: only records added since
    dry_run          BOOLEAN NOT NULL,
    phase            TEXT    NOT NULL,      -- 'contacts', 'opportunities'
    cursor           TEXT,
    state            TEXT    NOT NULL,      -- 'running', 'done', 'failed'
    total            BIGINT,                -- records GoHighLevel reported, as known
    seen             BIGINT  NOT NULL DEFAULT 0,
    changed          BIGINT  NOT NULL DEFAULT 0,
    queued           BIGINT  NOT NULL DEFAULT 0,
    report           TEXT,                  -- JSON: per rule and user, gains and losses
    error            TEXT,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    started_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    finished_at      BIGINT
);
CREATE INDEX backfills_running ON backfills (state, location_id);
