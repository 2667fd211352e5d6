-- Every accepted webhook, and its place in the processing queue.
CREATE TABLE events (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    kind             TEXT    NOT NULL,              -- 'app' or 'workflow': which parser reads `body`
    event_type       TEXT    NOT NULL,
    location_id      TEXT    NOT NULL,
    contact_id       TEXT    NOT NULL,
    opportunity_id   TEXT,
    webhook_id       TEXT,
    body             TEXT    NOT NULL,              -- the raw body as received
    received_at      INTEGER NOT NULL,              -- unix milliseconds
    status           TEXT    NOT NULL DEFAULT 'pending', -- pending, done, failed
    attempts         INTEGER NOT NULL DEFAULT 0,
    available_at     INTEGER NOT NULL,              -- not to be claimed before this
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    last_error       TEXT,
    finished_at      INTEGER
);
-- The claim looks for the oldest pending event of each contact.
CREATE INDEX events_by_contact ON events (status, location_id, contact_id, id);
CREATE INDEX events_ready ON events (status, available_at);

-- `webhookId`s seen, for deduplicating GoHighLevel's re-deliveries.
CREATE TABLE webhook_ids (
    webhook_id  TEXT    PRIMARY KEY,
    event_id    INTEGER NOT NULL,
    received_at INTEGER NOT NULL
);

-- What the last processed event said about a contact and an opportunity.
CREATE TABLE contact_state (
    location_id TEXT    NOT NULL,
    contact_id  TEXT    NOT NULL,
    tags        TEXT    NOT NULL,                   -- JSON array
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (location_id, contact_id)
);
CREATE TABLE opportunity_state (
    location_id    TEXT    NOT NULL,
    opportunity_id TEXT    NOT NULL,
    stage          TEXT    NOT NULL,                -- stage id (app) or name (workflow)
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (location_id, opportunity_id)
);

-- One row per processing attempt: what was decided and what the calls did.
CREATE TABLE decisions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   INTEGER NOT NULL REFERENCES events (id),
    attempt    INTEGER NOT NULL,
    matched    TEXT    NOT NULL,                    -- JSON array of rule names
    plan       TEXT    NOT NULL,                    -- JSON plan
    calls      TEXT    NOT NULL,                    -- JSON array of call records
    outcome    TEXT    NOT NULL,                    -- done, failed, retry
    error      TEXT,
    dry_run    INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX decisions_by_event ON decisions (event_id);
