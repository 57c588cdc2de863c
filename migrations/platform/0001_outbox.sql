-- Transactional outbox (crates/platform/src/outbox.rs). A row is written in the same transaction
-- as the business change it describes and published to Kafka by a relay.
CREATE TABLE IF NOT EXISTS outbox (
    id            BIGSERIAL PRIMARY KEY,
    -- CloudEvents `ce_id`: unique per event, consumers deduplicate on it.
    event_id      UUID        NOT NULL UNIQUE,
    topic         TEXT        NOT NULL,
    -- Kafka record key: the aggregate id, so one aggregate's events stay in one partition, in order.
    record_key    TEXT        NOT NULL,
    -- CloudEvents `ce_type`, e.g. fintech.payments.v1.order.created
    event_type    TEXT        NOT NULL,
    -- CloudEvents `ce_source`, e.g. /fintech/payments
    event_source  TEXT        NOT NULL,
    -- protobuf full name of the payload, sent as `content-type: application/protobuf; proto=<name>`
    payload_type  TEXT        NOT NULL,
    payload       BYTEA       NOT NULL,
    -- W3C trace context of the request that wrote the row, injected into the Kafka headers.
    traceparent   TEXT,
    tracestate    TEXT,
    occurred_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ,
    attempts      INTEGER     NOT NULL DEFAULT 0,
    last_error    TEXT
);

-- The relay reads only unpublished rows, oldest first, and the oldest unpublished row per key.
CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_unpublished_key_idx ON outbox (record_key, id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;
