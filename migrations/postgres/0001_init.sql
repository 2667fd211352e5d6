-- The PostgreSQL store: the same tables as the SQLite store (times are unix milliseconds,
-- lists are JSON text), for several replicas on one database.

-- Every accepted webhook, and its place in the processing queue.
CREATE TABLE events (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             TEXT    NOT NULL,
    event_type       TEXT    NOT NULL,
    location_id      TEXT    NOT NULL,
    contact_id       TEXT    NOT NULL,
    opportunity_id   TEXT,
    webhook_id       TEXT,
    body             TEXT    NOT NULL,
    received_at      BIGINT  NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending',
    attempts         BIGINT  NOT NULL DEFAULT 0,
    available_at     BIGINT  NOT NULL,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    last_error       TEXT,
    finished_at      BIGINT
);
CREATE INDEX events_by_contact ON events (status, location_id, contact_id, id);
CREATE INDEX events_ready ON events (status, available_at);
CREATE INDEX events_finished ON events (finished_at) WHERE status <> 'pending';

CREATE TABLE webhook_ids (
    webhook_id  TEXT   PRIMARY KEY,
    event_id    BIGINT NOT NULL,
    received_at BIGINT NOT NULL
);

CREATE TABLE contact_state (
    location_id TEXT   NOT NULL,
    contact_id  TEXT   NOT NULL,
    tags        TEXT   NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (location_id, contact_id)
);
CREATE TABLE opportunity_state (
    location_id    TEXT   NOT NULL,
    opportunity_id TEXT   NOT NULL,
    stage          TEXT   NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (location_id, opportunity_id)
);

CREATE TABLE decisions (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      BIGINT  NOT NULL REFERENCES events (id),
    attempt       BIGINT  NOT NULL,
    matched       TEXT    NOT NULL,
    plan          TEXT    NOT NULL,
    calls         TEXT    NOT NULL,
    outcome       TEXT    NOT NULL,
    error         TEXT,
    dry_run       BOOLEAN NOT NULL,
    batch         TEXT    NOT NULL DEFAULT '[]',
    rules_version TEXT    NOT NULL DEFAULT '',
    created_at    BIGINT  NOT NULL
);
CREATE INDEX decisions_by_event ON decisions (event_id);

CREATE TABLE token_failures (
    location_id TEXT   PRIMARY KEY,
    fingerprint TEXT   NOT NULL,
    error       TEXT   NOT NULL,
    since       BIGINT NOT NULL
);

CREATE TABLE known_followers (
    location_id TEXT   NOT NULL,
    contact_id  TEXT   NOT NULL,
    followers   TEXT   NOT NULL,
    seen_at     BIGINT NOT NULL,
    PRIMARY KEY (location_id, contact_id)
);

-- The GoHighLevel request budget shared by every replica: a GCRA per location and quota
-- (`window`, `day`), its theoretical arrival time in microseconds of the database clock.
CREATE TABLE rate_budget (
    location_id TEXT   NOT NULL,
    quota       TEXT   NOT NULL,
    tat         BIGINT NOT NULL,
    PRIMARY KEY (location_id, quota)
);
-- Locations GoHighLevel told to wait (429, no requests remaining), until when (microseconds).
CREATE TABLE rate_blocks (
    location_id TEXT   PRIMARY KEY,
    until_us    BIGINT NOT NULL
);
