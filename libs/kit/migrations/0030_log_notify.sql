-- Every transaction that appends to the log sends one NOTIFY on `switchyard_events` when it commits
-- (never when it rolls back), so followers of the log wake up when it grows instead of polling it.
-- A statement trigger with an empty payload: nothing per row, and PostgreSQL folds the identical
-- notifications of one transaction into one. Listeners read the log past their own position.
CREATE FUNCTION events_appended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('switchyard_events', '');
    RETURN NULL;
END $$;
CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_appended();
