-- Transactions that failed or were refunded (transactions.updated). With a result, the VAT is
-- reversed on tax.reversed (`reversed_result`); without one yet, the row voids the transaction so a
-- late or parked transactions.created is not taxed. At most one per transaction.
CREATE TABLE tax_reversals (
    transaction_id      UUID        PRIMARY KEY,
    order_id            UUID        NOT NULL,
    reason              TEXT        NOT NULL CHECK (reason IN ('transaction_failed', 'transaction_refunded')),
    transaction_version BIGINT      NOT NULL,
    reversed_result     BOOLEAN     NOT NULL,
    reversed_at         TIMESTAMPTZ NOT NULL
);
