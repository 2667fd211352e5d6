-- Who ended an ownership row: 'autofollow' (its rules), or 'hand' (drift repair found the
-- follower removed in GoHighLevel: reapply and drift repair do not add them back).
ALTER TABLE owned_followers ADD COLUMN removed_by TEXT;
