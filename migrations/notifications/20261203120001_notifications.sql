-- Notifications: webhook endpoints and their secrets, the public events, one message per event
-- and endpoint (the delivery queue), and every HTTP attempt (ADR 0026).

CREATE TABLE notification_endpoints (
    endpoint_id           uuid PRIMARY KEY,
    owner                 text NOT NULL,
    url                   text NOT NULL,
    -- Public event types delivered; empty: every type.
    event_types           text[] NOT NULL DEFAULT '{}',
    description           text NOT NULL DEFAULT '',
    -- Deliveries per second; 0: no limit.
    rate_limit_per_second integer NOT NULL DEFAULT 0 CHECK (rate_limit_per_second >= 0),
    disabled              boolean NOT NULL DEFAULT false,
    disabled_reason       text NOT NULL DEFAULT '',
    -- Since when every attempt failed; NULL after a success. Disabling after too long counts from it.
    failing_since         timestamptz,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    deleted               boolean NOT NULL DEFAULT false
);
CREATE INDEX notification_endpoints_owner ON notification_endpoints (owner, created_at, endpoint_id) WHERE NOT deleted;

-- Signing secrets: the current one (expires_at NULL) and, after a rotation, the previous one until
-- its overlap ends. Never logged, never returned after the response that created it.
CREATE TABLE notification_secrets (
    secret_id   bigserial PRIMARY KEY,
    endpoint_id uuid NOT NULL REFERENCES notification_endpoints (endpoint_id),
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz
);
CREATE INDEX notification_secrets_endpoint ON notification_secrets (endpoint_id);

-- Public events in the order they were committed (inserts are serialized by an advisory lock, so
-- `sequence` never commits out of order and a reader that resumes after one misses none).
CREATE TABLE notification_events (
    sequence    bigserial PRIMARY KEY,
    event_id    uuid NOT NULL UNIQUE,
    event_type  text NOT NULL,
    subject     text NOT NULL DEFAULT '',
    occurred_at timestamptz NOT NULL,
    -- The exact webhook body that is signed and sent.
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One event for one endpoint: the queue. Created once, in the consumer's inbox transaction.
CREATE TABLE notification_messages (
    message_id      uuid PRIMARY KEY,
    endpoint_id     uuid NOT NULL REFERENCES notification_endpoints (endpoint_id),
    event_sequence  bigint NOT NULL REFERENCES notification_events (sequence),
    status          text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    -- Attempts made in all; `retry_index`: failures since it was last queued (the schedule position).
    attempts        integer NOT NULL DEFAULT 0,
    retry_index     integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    -- A worker holds the message until then; after a crash another takes it, same webhook-id.
    lease_until     timestamptz,
    created_at      timestamptz NOT NULL,
    delivered_at    timestamptz,
    UNIQUE (endpoint_id, event_sequence)
);
CREATE INDEX notification_messages_due ON notification_messages (next_attempt_at) WHERE status = 'pending';
CREATE INDEX notification_messages_endpoint ON notification_messages (endpoint_id, created_at DESC, message_id DESC);

CREATE TABLE notification_attempts (
    attempt_id       uuid PRIMARY KEY,
    message_id       uuid NOT NULL REFERENCES notification_messages (message_id),
    endpoint_id      uuid NOT NULL,
    attempt_number   integer NOT NULL,
    url              text NOT NULL,
    status_code      integer NOT NULL,
    latency_ms       bigint NOT NULL,
    response_snippet text NOT NULL,
    error            text NOT NULL,
    success          boolean NOT NULL,
    started_at       timestamptz NOT NULL
);
CREATE INDEX notification_attempts_message ON notification_attempts (message_id, started_at DESC, attempt_id DESC);
CREATE INDEX notification_attempts_endpoint ON notification_attempts (endpoint_id, started_at DESC, attempt_id DESC);
