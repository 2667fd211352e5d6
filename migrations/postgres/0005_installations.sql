-- GoHighLevel Marketplace app installations: a location's or a company's OAuth tokens, sealed
-- (XChaCha20-Poly1305 with AUTOFOLLOW_ENCRYPTION_KEY; never stored in plaintext). A location
-- installed through a company install has company_id set and no refresh token: its access
-- token comes from the company's. `version` grows with every change of tokens or state; a
-- refresh is single-flight: the one holding the lease (refresh_owner, refresh_until) calls
-- GoHighLevel, everyone else waits for the version to change.
CREATE TABLE installations (
    id            TEXT    PRIMARY KEY,   -- location id, or company id
    kind          TEXT    NOT NULL,      -- 'location' | 'company'
    company_id    TEXT,
    access_token  TEXT,                  -- sealed
    refresh_token TEXT,                  -- sealed
    scopes        TEXT    NOT NULL DEFAULT '',
    issued_at     BIGINT,
    expires_at    BIGINT,
    state         TEXT    NOT NULL,      -- 'active' | 'reauthorize' | 'uninstalled'
    problem       TEXT,
    version       BIGINT  NOT NULL DEFAULT 1,
    refresh_owner TEXT,
    refresh_until BIGINT,
    updated_at    BIGINT NOT NULL
);
