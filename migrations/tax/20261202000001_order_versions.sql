-- ADR 0015: a transaction is taxed on the order as it was when the transaction was made. Every
-- order version tax receives is kept (the ECST cache `order_cache` still holds the latest), and a
-- transaction waits in parking for the version it refers to.
CREATE TABLE order_versions (
    order_id  UUID        NOT NULL,
    version   BIGINT      NOT NULL CHECK (version >= 1),
    payload   JSONB       NOT NULL,
    stored_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, version)
);
INSERT INTO order_versions (order_id, version, payload) SELECT id, version, payload FROM order_cache;

-- The order version each parked transaction, failure and result refers to (0: the event carried
-- none, the latest cached order is used). The sweeper records its failures per row (ADR 0017).
ALTER TABLE parked_transactions
    ADD COLUMN order_version  BIGINT  NOT NULL DEFAULT 0 CHECK (order_version >= 0),
    ADD COLUMN sweep_attempts INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN last_error     TEXT;
ALTER TABLE tax_failures ADD COLUMN order_version BIGINT NOT NULL DEFAULT 0 CHECK (order_version >= 0);
ALTER TABLE taxed_transactions ADD COLUMN order_version BIGINT NOT NULL DEFAULT 0 CHECK (order_version >= 0);
-- An order that arrives late re-taxes the transactions that failed waiting for it.
CREATE INDEX tax_failures_order_not_found_idx ON tax_failures (order_id)
    WHERE resolved_at IS NULL AND reason = 'order_not_found';
