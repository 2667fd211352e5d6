-- The assignee autofollow last saw for each contact and opportunity, so a rule can react to
-- an owner change (`assigned_changed`) and name the previous owner (`previous_assigned_user`).
CREATE TABLE assignees (
    location_id TEXT    NOT NULL,
    kind        TEXT    NOT NULL,   -- 'contact' | 'opportunity'
    record_id   TEXT    NOT NULL,   -- the contact's or the opportunity's id
    user_id     TEXT,               -- NULL: unassigned
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (location_id, kind, record_id)
);
