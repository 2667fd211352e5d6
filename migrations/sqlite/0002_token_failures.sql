-- Locations whose token GoHighLevel refused (401/403): their events wait, parked, until the
-- token changes or an operator replays one of them.
CREATE TABLE token_failures (
    location_id TEXT    PRIMARY KEY,
    fingerprint TEXT    NOT NULL,   -- SHA-256 prefix of the refused token, never the token
    error       TEXT    NOT NULL,
    since       INTEGER NOT NULL
);
