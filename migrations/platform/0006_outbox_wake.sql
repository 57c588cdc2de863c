-- The outbox relay wakes when a transaction that wrote outbox rows commits (ADR 0029): every
-- INSERT statement into the outbox notifies `fintech_outbox`. PostgreSQL delivers a notification
-- only when (and if) the transaction commits, folds identical notifications of one transaction
-- into one, and only to listeners on the same database (each service has its own). Relays LISTEN
-- on a connection of their own and fall back to polling when it is lost.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fintech_outbox', '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
