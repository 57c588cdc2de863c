-- Consumer inbox (crates/platform/src/kafka/consumer.rs): the CloudEvents ids a consumer has applied,
-- written in the same transaction as the effect so a redelivered event changes nothing.
CREATE TABLE IF NOT EXISTS processed_events (
    consumer     TEXT        NOT NULL,
    event_id     TEXT        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
