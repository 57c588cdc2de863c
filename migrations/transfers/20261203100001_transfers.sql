-- Transfers: one row per transfer, kept by the saga's activities (docs/adr/0024-transfers-saga-on-temporal.md).
-- Every change bumps `version` to the number the workflow assigned to that step, so an activity
-- that is retried after it committed finds `version` already there and writes (and publishes)
-- nothing the second time.
CREATE TABLE transfers (
    transfer_id       UUID        PRIMARY KEY,
    workflow_id       TEXT        NOT NULL UNIQUE,
    -- SHA-256 of the CreateTransfer request: the same key with another request is refused.
    fingerprint       TEXT        NOT NULL,
    requested_by      TEXT        NOT NULL,
    customer_id       TEXT        NOT NULL,
    from_account_id   UUID        NOT NULL,
    to_account_id     UUID        NOT NULL CHECK (to_account_id <> from_account_id),
    amount            BIGINT      NOT NULL CHECK (amount > 0),
    currency          TEXT        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    reference         TEXT        NOT NULL CHECK (length(reference) <= 140),
    status            TEXT        NOT NULL CHECK (status IN ('pending', 'awaiting_approval', 'completed', 'failed', 'cancelled', 'rejected')),
    step              TEXT        NOT NULL CHECK (step IN ('validating', 'holding', 'approving', 'capturing', 'releasing', 'done')),
    failure_code      TEXT,
    failure_reason    TEXT,
    hold_id           TEXT,
    entry_id          TEXT,
    requires_approval BOOLEAN     NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    finished_at       TIMESTAMPTZ,
    version           BIGINT      NOT NULL CHECK (version >= 1),
    CHECK ((status IN ('completed', 'failed', 'cancelled', 'rejected')) = (finished_at IS NOT NULL)),
    CHECK ((status = 'completed') = (entry_id IS NOT NULL)),
    CHECK ((failure_code IS NULL) = (status IN ('pending', 'awaiting_approval', 'completed')))
);
-- ListTransfers by customer, by source and by destination account, newest first, keyset-paged.
CREATE INDEX transfers_customer_idx ON transfers (customer_id, created_at DESC, transfer_id DESC);
CREATE INDEX transfers_from_idx ON transfers (from_account_id, created_at DESC, transfer_id DESC);
CREATE INDEX transfers_to_idx ON transfers (to_account_id, created_at DESC, transfer_id DESC);

-- The service's own copy of `accounts.opened` / `accounts.updated` (ECST): the highest version
-- wins. Validation reads it; the service never calls the accounts service.
CREATE TABLE account_cache (
    account_id  UUID        PRIMARY KEY,
    customer_id TEXT        NOT NULL,
    currency    TEXT        NOT NULL,
    state       TEXT        NOT NULL CHECK (state IN ('active', 'dormant', 'closed')),
    freeze_kind TEXT        CHECK (freeze_kind IN ('debits', 'credits', 'both')),
    version     BIGINT      NOT NULL CHECK (version >= 1),
    updated_at  TIMESTAMPTZ NOT NULL
);

-- The starter job's candidates: accepted transfers whose workflow may not have started.
CREATE INDEX transfers_accepted_idx ON transfers (created_at) WHERE version = 1;
