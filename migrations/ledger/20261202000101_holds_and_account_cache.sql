-- Holds and the cache of the accounts service's accounts (docs/adr/0022-ledger-holds-and-account-cache.md).
--
-- A hold is an event of its account's stream (ledger.hold.placed / captured / released) like any
-- posting; `ledger_holds` is its projection and `ledger_balances.held` the sum of the account's
-- active holds, written in the transaction that appends the event. "Captured or released at most
-- once" is enforced here, not only in code: a terminal hold can never be updated again (trigger),
-- every terminal transition is one row of `ledger_hold_endings` (primary key hold_id), and every
-- capture one row of `ledger_hold_captures` (primary key entry_id, the entry exists).

-- The enforcement state of a customer account, from accounts.opened / accounts.updated; NULL for
-- internal and system accounts. The overdraft policy and limit follow the accounts service.
ALTER TABLE ledger_accounts
    ADD COLUMN customer_id TEXT CHECK (customer_id IS NULL OR length(customer_id) BETWEEN 1 AND 64),
    ADD COLUMN customer_state TEXT CHECK (customer_state IN ('active', 'dormant', 'closed')),
    ADD COLUMN freeze_kind TEXT CHECK (freeze_kind IN ('none', 'debits', 'credits', 'both')),
    ADD CONSTRAINT ledger_accounts_customer_fields
        CHECK ((customer_id IS NULL) = (customer_state IS NULL) AND (customer_id IS NULL) = (freeze_kind IS NULL)),
    ADD CONSTRAINT ledger_accounts_closed_not_frozen CHECK (customer_state IS DISTINCT FROM 'closed' OR freeze_kind = 'none');

-- Sum of the account's active holds after events 1..version.
ALTER TABLE ledger_balances ADD COLUMN held BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0);

-- The latest state of every account the accounts service published (highest version wins).
CREATE TABLE ledger_account_cache (
    account_id  UUID        PRIMARY KEY,
    customer_id TEXT        NOT NULL,
    currency    TEXT        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    version     BIGINT      NOT NULL CHECK (version >= 1),
    -- the fintech.accounts.v1.Account as received (protobuf JSON of the fields the ledger reads)
    payload     JSONB       NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE ledger_holds (
    hold_id           TEXT        PRIMARY KEY CHECK (length(hold_id) BETWEEN 1 AND 128),
    account_id        UUID        NOT NULL REFERENCES ledger_accounts (account_id),
    currency          TEXT        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount            BIGINT      NOT NULL CHECK (amount > 0),
    held              BIGINT      NOT NULL CHECK (held >= 0),
    captured          BIGINT      NOT NULL DEFAULT 0 CHECK (captured >= 0),
    status            TEXT        NOT NULL CHECK (status IN ('active', 'captured', 'released', 'expired')),
    reason            TEXT        NOT NULL,
    expires_at        TIMESTAMPTZ NOT NULL,
    placed_at         TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    release_reason    TEXT        NOT NULL DEFAULT '',
    capture_entry_ids TEXT[]      NOT NULL DEFAULT '{}',
    version           BIGINT      NOT NULL CHECK (version >= 1),
    -- SHA-256 of what PlaceHold was asked (a retry with other content is refused)
    fingerprint       TEXT        NOT NULL,
    -- the account's balances right after the hold's last change
    balance           BIGINT      NOT NULL,
    balance_held      BIGINT      NOT NULL,
    balance_available BIGINT      NOT NULL,
    balance_version   BIGINT      NOT NULL,
    balance_at        TIMESTAMPTZ NOT NULL,
    CHECK (held + captured <= amount),
    -- an active hold reserves something; a terminal one nothing
    CHECK ((status = 'active') = (held > 0)),
    CHECK (status <> 'captured' OR captured > 0),
    CHECK (cardinality(capture_entry_ids) = 0 OR captured > 0)
);
-- ListHolds: an account's holds, newest first (keyset).
CREATE INDEX ledger_holds_account_idx ON ledger_holds (account_id, placed_at DESC, hold_id DESC);
-- The expiry job.
CREATE INDEX ledger_holds_expiry_idx ON ledger_holds (expires_at) WHERE status = 'active';

-- A terminal hold never changes again.
CREATE FUNCTION ledger_holds_terminal_is_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'hold % is % and can never change again', OLD.hold_id, OLD.status
        USING ERRCODE = 'check_violation';
END;
$$;
CREATE TRIGGER ledger_holds_terminal_is_final BEFORE UPDATE ON ledger_holds
    FOR EACH ROW WHEN (OLD.status <> 'active') EXECUTE FUNCTION ledger_holds_terminal_is_final();
CREATE TRIGGER ledger_holds_never_deleted BEFORE DELETE ON ledger_holds
    FOR EACH ROW EXECUTE FUNCTION ledger_holds_terminal_is_final();

-- The one terminal transition of a hold.
CREATE TABLE ledger_hold_endings (
    hold_id    TEXT        PRIMARY KEY REFERENCES ledger_holds (hold_id),
    status     TEXT        NOT NULL CHECK (status IN ('captured', 'released', 'expired')),
    ended_at   TIMESTAMPTZ NOT NULL,
    -- the stream version of the event that ended it
    version    BIGINT      NOT NULL CHECK (version >= 1)
);

-- Every capture of a hold: one entry captures at most one hold, once.
CREATE TABLE ledger_hold_captures (
    entry_id    TEXT        PRIMARY KEY REFERENCES ledger_entries (entry_id),
    hold_id     TEXT        NOT NULL REFERENCES ledger_holds (hold_id),
    amount      BIGINT      NOT NULL CHECK (amount > 0),
    released    BIGINT      NOT NULL CHECK (released >= 0),
    captured_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX ledger_hold_captures_hold_idx ON ledger_hold_captures (hold_id);
