-- The order version a transaction pays for (ADR 0015): the order's state when the transaction
-- was created, carried on every transaction event so tax calculates on exactly that state.
-- Rows written before this column existed get 0 ("unknown"; tax then uses its latest copy).
ALTER TABLE transactions ADD COLUMN order_version BIGINT NOT NULL DEFAULT 0 CHECK (order_version >= 0);
ALTER TABLE transactions ALTER COLUMN order_version DROP DEFAULT;
