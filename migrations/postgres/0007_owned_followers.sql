-- The ownership ledger: which followers autofollow itself added to a contact, by which rule
-- (how long it keeps them: on_match or while_matching; for a while-matching rule, the
-- opportunity whose events re-check it, NULL for the contact's), in which rule-set version
-- and event, and when; and when it removed them. A follower without a live row here was
-- not added by autofollow and is never removed by an automatic removal.
CREATE TABLE owned_followers (
    location_id      TEXT    NOT NULL,
    contact_id       TEXT    NOT NULL,
    user_id          TEXT    NOT NULL,
    rule             TEXT    NOT NULL,
    follow           TEXT    NOT NULL,   -- 'on_match' | 'while_matching'
    subject          TEXT,               -- opportunity id, or NULL: the contact
    rules_version    TEXT    NOT NULL,
    event_id         BIGINT  NOT NULL,
    added_at         BIGINT  NOT NULL,
    removed_at       BIGINT,             -- NULL: autofollow keeps the user following
    removed_event_id BIGINT,
    PRIMARY KEY (location_id, contact_id, user_id, rule)
);
CREATE INDEX owned_followers_contact ON owned_followers (contact_id);
