-- A parked event (its location's token was refused) has a status of its own; it used to be
-- `pending` with `available_at` far in the future (9,000,000,000,000).
UPDATE events SET status = 'parked' WHERE status = 'pending' AND available_at >= 9000000000000;
