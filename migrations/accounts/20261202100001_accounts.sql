-- Accounts owns customers' current and savings accounts (docs/adr/0023-accounts-service.md).
-- Every change of an account bumps `version` and writes an outbox row with the account's full
-- state in the same transaction (services/accounts/src/app).
CREATE TABLE accounts (
    account_id                UUID        PRIMARY KEY,
    customer_id               TEXT        NOT NULL CHECK (customer_id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    product                   TEXT        NOT NULL CHECK (product IN ('current', 'savings')),
    currency                  TEXT        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    state                     TEXT        NOT NULL CHECK (state IN ('active', 'dormant', 'closed')),
    freeze_kind               TEXT        CHECK (freeze_kind IN ('debits', 'credits', 'both')),
    freeze_reason             TEXT        CHECK (length(freeze_reason) BETWEEN 1 AND 500),
    frozen_at                 TIMESTAMPTZ,
    overdraft_limit           BIGINT      NOT NULL CHECK (overdraft_limit >= 0),
    opened_at                 TIMESTAMPTZ NOT NULL,
    updated_at                TIMESTAMPTZ NOT NULL,
    closed_at                 TIMESTAMPTZ,
    version                   BIGINT      NOT NULL CHECK (version >= 1),
    -- As of `version` (what was published with it); the live value is in account_balances.
    last_customer_movement_at TIMESTAMPTZ,
    CHECK ((freeze_kind IS NULL) = (freeze_reason IS NULL) AND (freeze_kind IS NULL) = (frozen_at IS NULL)),
    CHECK (product = 'current' OR overdraft_limit = 0),
    CHECK ((state = 'closed') = (closed_at IS NOT NULL)),
    CHECK (state <> 'closed' OR freeze_kind IS NULL)
);
-- ListAccounts: a customer's accounts, oldest first, keyset-paginated.
CREATE INDEX accounts_customer_opened_idx ON accounts (customer_id, opened_at, account_id);
-- The dormancy job's candidates.
CREATE INDEX accounts_active_idx ON accounts (account_id) WHERE state = 'active';

-- Who changed what and why, one row per version (the reasons of freezes and unfreezes).
CREATE TABLE account_changes (
    account_id UUID        NOT NULL REFERENCES accounts (account_id),
    version    BIGINT      NOT NULL,
    change     TEXT        NOT NULL,
    reason     TEXT,
    actor      TEXT        NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (account_id, version)
);

-- The projection of the ledger's events: the figures of the highest ledger stream version seen.
-- Written at open with version 0 (the ledger has not reported the account yet).
CREATE TABLE account_balances (
    account_id                UUID        PRIMARY KEY REFERENCES accounts (account_id),
    ledger_balance            BIGINT      NOT NULL,
    held                      BIGINT      NOT NULL,
    available                 BIGINT      NOT NULL,
    ledger_version            BIGINT      NOT NULL CHECK (ledger_version >= 0),
    ledger_updated_at         TIMESTAMPTZ,
    -- The latest customer movement seen (any order of arrival): what dormancy counts from.
    last_customer_movement_at TIMESTAMPTZ
);

-- Every ledger stream version seen, with the balance after it: the end-of-day balance of any
-- past day for interest, and the duplicate check of customer movements.
CREATE TABLE ledger_balance_history (
    account_id     UUID        NOT NULL REFERENCES accounts (account_id),
    ledger_version BIGINT      NOT NULL CHECK (ledger_version >= 1),
    balance        BIGINT      NOT NULL,
    held           BIGINT      NOT NULL,
    occurred_at    TIMESTAMPTZ NOT NULL,
    movement       BOOLEAN     NOT NULL,
    PRIMARY KEY (account_id, ledger_version)
);

-- Holds as the ledger last reported them (highest hold version wins).
CREATE TABLE account_holds (
    hold_id    TEXT   PRIMARY KEY,
    account_id UUID   NOT NULL REFERENCES accounts (account_id),
    status     TEXT   NOT NULL CHECK (status IN ('active', 'captured', 'released', 'expired')),
    held       BIGINT NOT NULL CHECK (held >= 0),
    version    BIGINT NOT NULL CHECK (version >= 1)
);
CREATE INDEX account_holds_active_idx ON account_holds (account_id) WHERE status = 'active';

-- Savings interest: how far each account is accrued and settled, and the sub-minor-unit carry.
-- Units are 1/(10000*365) minor units, so a day's accrual is balance * rate_bps exactly.
CREATE TABLE interest_state (
    account_id      UUID          PRIMARY KEY REFERENCES accounts (account_id),
    -- Last day accrued (the day before opening until the first accrual).
    accrued_through DATE          NOT NULL,
    -- Last day whose accrual was settled into a posting (or carried).
    settled_through DATE          NOT NULL,
    -- What the last settlement could not post (floor): carried into the next one.
    carry_units     NUMERIC(40,0) NOT NULL DEFAULT 0 CHECK (carry_units >= 0)
);

CREATE TABLE interest_accruals (
    account_id UUID          NOT NULL REFERENCES accounts (account_id),
    day        DATE          NOT NULL,
    balance    BIGINT        NOT NULL,
    rate_bps   INTEGER       NOT NULL CHECK (rate_bps >= 0),
    units      NUMERIC(40,0) NOT NULL CHECK (units >= 0),
    PRIMARY KEY (account_id, day)
);

-- One row per posted month: the unique constraints make a second run of the job post nothing.
CREATE TABLE interest_postings (
    posting_id  TEXT          PRIMARY KEY,
    account_id  UUID          NOT NULL REFERENCES accounts (account_id),
    period      TEXT          NOT NULL CHECK (period ~ '^[0-9]{4}-[0-9]{2}$'),
    amount      BIGINT        NOT NULL CHECK (amount > 0),
    days        INTEGER       NOT NULL CHECK (days > 0),
    units       NUMERIC(40,0) NOT NULL,
    posted_at   TIMESTAMPTZ   NOT NULL,
    -- When the ledger's entry for it was seen by the projection (NULL: still in flight).
    booked_at   TIMESTAMPTZ,
    UNIQUE (account_id, period)
);
