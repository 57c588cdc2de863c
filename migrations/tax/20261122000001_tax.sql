-- The tax service's own state, built only from events (Event-Carried State Transfer).

-- One row per order, the full order as JSON, as the design prescribes. `version` is payments'
-- version of that state: an event with a lower or equal version never overwrites the row.
CREATE TABLE order_cache (
    id               UUID        PRIMARY KEY,
    payload          JSONB       NOT NULL,
    version          BIGINT      NOT NULL,
    order_created_at TIMESTAMPTZ NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Transactions that arrived before their order. Released when the order arrives, failed with
-- order_not_found when `deadline` passes first.
CREATE TABLE parked_transactions (
    transaction_id UUID        PRIMARY KEY,
    order_id       UUID        NOT NULL,
    event_type     TEXT        NOT NULL,
    payload        BYTEA       NOT NULL,
    traceparent    TEXT,
    tracestate     TEXT,
    parked_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    deadline       TIMESTAMPTZ NOT NULL
);
CREATE INDEX parked_transactions_order_idx ON parked_transactions (order_id);
CREATE INDEX parked_transactions_deadline_idx ON parked_transactions (deadline);

-- Exactly one result per transaction (the primary key), published on tax.calculated.
CREATE TABLE taxed_transactions (
    transaction_id UUID        PRIMARY KEY,
    order_id       UUID        NOT NULL,
    customer_id    TEXT        NOT NULL,
    base_amount    BIGINT      NOT NULL CHECK (base_amount > 0),
    tax_applied    BIGINT      NOT NULL CHECK (tax_applied >= 0),
    total_amount   BIGINT      NOT NULL CHECK (total_amount = base_amount + tax_applied),
    currency       TEXT        NOT NULL,
    country        TEXT        NOT NULL,
    product_type   TEXT        NOT NULL,
    tax_rate_bps   INTEGER     NOT NULL CHECK (tax_rate_bps BETWEEN 0 AND 10000),
    reason         TEXT        NOT NULL,
    rule_version   TEXT        NOT NULL,
    tax_date       TIMESTAMPTZ NOT NULL,
    calculated_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX taxed_transactions_order_idx ON taxed_transactions (order_id, calculated_at, transaction_id);
CREATE INDEX taxed_transactions_customer_idx ON taxed_transactions (customer_id, calculated_at, transaction_id);

-- Transactions that could not be taxed (published on tax.failed), until an operator's retry
-- succeeds (`resolved_at`).
CREATE TABLE tax_failures (
    transaction_id      UUID        PRIMARY KEY,
    order_id            UUID        NOT NULL,
    reason              TEXT        NOT NULL,
    detail              TEXT        NOT NULL,
    attempts            INTEGER     NOT NULL DEFAULT 1,
    original_event_type TEXT        NOT NULL,
    original_event      BYTEA       NOT NULL,
    traceparent         TEXT,
    tracestate          TEXT,
    failed_at           TIMESTAMPTZ NOT NULL,
    resolved_at         TIMESTAMPTZ
);
CREATE INDEX tax_failures_open_idx ON tax_failures (failed_at, transaction_id) WHERE resolved_at IS NULL;
