-- The idempotency claim in one round trip (crates/platform/src/idempotency.rs). It used to be
-- four statements: read lock_timeout, set it to the claim's wait, insert the placeholder, restore
-- it. Under load every round trip costs both the service and PostgreSQL a wake-up, and every
-- command and every ledger posting claims a key.
--
-- Returns one row (claimed = true) when the placeholder was inserted; one row with the stored
-- fingerprint and response when the key exists; no row when the conflicting row disappeared
-- (purged) before it could be read, and the caller tries again. A concurrent claim of the same key
-- is waited for at most p_lock_wait (e.g. '5000ms'); then the statement fails with SQLSTATE 55P03
-- (lock_not_available) and the transaction is aborted, as before.
CREATE OR REPLACE FUNCTION idempotency_claim(p_scope TEXT, p_key TEXT, p_fingerprint TEXT, p_lock_wait TEXT)
RETURNS TABLE (claimed BOOLEAN, stored_fingerprint TEXT, stored_response BYTEA)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    previous_lock_timeout TEXT := current_setting('lock_timeout');
    inserted BIGINT;
BEGIN
    PERFORM set_config('lock_timeout', p_lock_wait, true);
    INSERT INTO idempotency_keys (scope, idempotency_key, request_fingerprint, response)
    VALUES (p_scope, p_key, p_fingerprint, '\x'::bytea)
    ON CONFLICT (scope, idempotency_key) DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    -- The command's own statements keep the transaction's lock_timeout.
    PERFORM set_config('lock_timeout', previous_lock_timeout, true);
    IF inserted = 1 THEN
        RETURN QUERY SELECT true, NULL::TEXT, NULL::BYTEA;
    ELSE
        RETURN QUERY SELECT false, k.request_fingerprint, k.response
            FROM idempotency_keys k WHERE k.scope = p_scope AND k.idempotency_key = p_key;
    END IF;
END
$$;
