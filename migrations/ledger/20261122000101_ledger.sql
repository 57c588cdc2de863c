-- The ledger is event-sourced (services/ledger, docs/adr/0004-ledger-hot-accounts.md).
--
-- The primary record is `ledger_events`: one stream per account, appended with the version the
-- writer expects (optimistic concurrency on `ledger_streams.version`, and UNIQUE(stream_id, version)
-- as the last line of defence). `ledger_accounts`, `ledger_balances` and `ledger_entries` are
-- projections and indexes, written in the same transaction as the events they derive from.

-- Head of every stream: the version of its last event and that event's hash.
CREATE TABLE ledger_streams (
    stream_id   UUID        PRIMARY KEY,
    stream_type TEXT        NOT NULL CHECK (stream_type IN ('account')),
    version     BIGINT      NOT NULL CHECK (version >= 1),
    head_hash   TEXT        NOT NULL CHECK (head_hash ~ '^[0-9a-f]{64}$'),
    -- occurred_at of the last event; the next event never occurs earlier (as-of-time reads are
    -- prefixes of the stream).
    updated_at  TIMESTAMPTZ NOT NULL
);

-- The events. `hash` = SHA-256 over the previous hash and the event's canonical form
-- (services/ledger/src/domain/stream.rs), so an edited row breaks the chain from there on.
CREATE TABLE ledger_events (
    event_id      BIGSERIAL   PRIMARY KEY,
    stream_id     UUID        NOT NULL REFERENCES ledger_streams (stream_id),
    version       BIGINT      NOT NULL CHECK (version >= 1),
    event_type    TEXT        NOT NULL,
    payload       JSONB       NOT NULL,
    -- the entry a posting event belongs to (copied from the payload, for GetEntry)
    entry_id      TEXT,
    occurred_at   TIMESTAMPTZ NOT NULL,
    previous_hash TEXT        NOT NULL CHECK (previous_hash ~ '^[0-9a-f]{64}$'),
    hash          TEXT        NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    UNIQUE (stream_id, version)
);
CREATE INDEX ledger_events_entry_idx ON ledger_events (entry_id) WHERE entry_id IS NOT NULL;

-- Projection of each stream's AccountOpened event.
CREATE TABLE ledger_accounts (
    account_id       UUID        PRIMARY KEY REFERENCES ledger_streams (stream_id),
    code             TEXT        NOT NULL UNIQUE CHECK (code ~ '^[A-Za-z0-9][A-Za-z0-9:._-]{0,99}$'),
    name             TEXT        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    account_type     TEXT        NOT NULL CHECK (account_type IN ('asset', 'liability', 'equity', 'revenue', 'expense')),
    currency         TEXT        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    overdraft_policy TEXT        NOT NULL CHECK (overdraft_policy IN ('forbidden', 'limited', 'unlimited')),
    overdraft_limit  BIGINT      NOT NULL CHECK (overdraft_limit >= 0),
    system           BOOLEAN     NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL
);
-- ListAccounts filters by currency and type, ordered by code.
CREATE INDEX ledger_accounts_currency_code_idx ON ledger_accounts (currency, code);

-- Projection: the balance of each account after events 1..version of its stream.
CREATE TABLE ledger_balances (
    account_id UUID        PRIMARY KEY REFERENCES ledger_accounts (account_id),
    currency   TEXT        NOT NULL,
    balance    BIGINT      NOT NULL,
    version    BIGINT      NOT NULL CHECK (version >= 1),
    updated_at TIMESTAMPTZ NOT NULL
);

-- Every posted entry, once: the primary key keeps an entry id from ever posting twice, even after
-- its idempotency key was purged.
CREATE TABLE ledger_entries (
    entry_id    TEXT        PRIMARY KEY CHECK (length(entry_id) BETWEEN 1 AND 128),
    posted_at   TIMESTAMPTZ NOT NULL,
    line_count  INTEGER     NOT NULL CHECK (line_count >= 2),
    account_ids UUID[]      NOT NULL
);
