-- Payments owns orders and their transactions. Every change bumps `version` and writes an outbox
-- row with the entity's full state in the same transaction (services/payments/src/storage).
CREATE TABLE orders (
    order_id     UUID        PRIMARY KEY,
    customer_id  TEXT        NOT NULL CHECK (length(customer_id) BETWEEN 1 AND 64),
    country      TEXT        NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    currency     TEXT        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount       BIGINT      NOT NULL CHECK (amount > 0),
    product_type TEXT        NOT NULL CHECK (product_type ~ '^[a-z][a-z0-9_]{0,63}$'),
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    version      BIGINT      NOT NULL CHECK (version >= 1)
);
-- ListOrders: a customer's orders, newest first, keyset-paginated.
CREATE INDEX orders_customer_created_idx ON orders (customer_id, created_at DESC, order_id DESC);

CREATE TABLE transactions (
    transaction_id UUID        PRIMARY KEY,
    order_id       UUID        NOT NULL REFERENCES orders (order_id),
    customer_id    TEXT        NOT NULL,
    amount         BIGINT      NOT NULL CHECK (amount > 0),
    currency       TEXT        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status         TEXT        NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'refunded')),
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    version        BIGINT      NOT NULL CHECK (version >= 1)
);
-- ListTransactions: an order's transactions, oldest first, keyset-paginated.
CREATE INDEX transactions_order_created_idx ON transactions (order_id, created_at, transaction_id);
