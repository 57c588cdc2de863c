-- Idempotency of commands (crates/platform/src/idempotency.rs). The row is written in the same
-- transaction as the business change, so a key is stored if and only if its effect committed.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    -- the command, e.g. /fintech.payments.v1.PaymentsService/CreateOrder
    scope               TEXT        NOT NULL,
    idempotency_key     TEXT        NOT NULL,
    -- sha256 of the encoded request: the same key with another request is rejected
    request_fingerprint TEXT        NOT NULL,
    -- the encoded response returned to every retry
    response            BYTEA       NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, idempotency_key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at_idx ON idempotency_keys (created_at);
