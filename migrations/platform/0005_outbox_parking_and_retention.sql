-- Outbox rows that cannot be published are parked, and rounds claim without an open transaction
-- (crates/platform/src/outbox.rs, ADR 0013); retention deletes old inbox rows (ADR 0014).
--
-- not_before: a claimed row's lease (now + lease) or a rejected row's next attempt; the relay
--   claims only rows whose not_before has passed.
-- claim_token: the round that holds the lease; marking a row checks it, so a round whose lease ran
--   out cannot overwrite what the round that took the row over records.
-- claimed_by: the key of the claiming relay's liveness lock (pg_advisory_lock(class, key), held on
--   a connection of its own): a leased row whose relay no longer holds its lock (the process died)
--   is claimable at once.
-- parked_at: set after OUTBOX_MAX_ATTEMPTS rejected publishes; a parked row is never claimed (and
--   holds its key's later rows back) until an operator re-queues it.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS not_before TIMESTAMPTZ;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS claim_token UUID;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS claimed_by INTEGER;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS parked_at TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS outbox_parked_idx ON outbox (id) WHERE parked_at IS NOT NULL AND published_at IS NULL;

-- The inbox retention deletes by age.
CREATE INDEX IF NOT EXISTS processed_events_processed_at_idx ON processed_events (processed_at);
