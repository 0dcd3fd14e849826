-- The database itself refuses an unbalanced ledger transaction, whatever code writes it.
-- A ledger transaction is written in one statement; after each statement the transactions it
-- touched must sum to zero in a single currency. Entries are never changed or removed.

CREATE FUNCTION ledger_transactions_balance() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unbalanced TEXT;
BEGIN
    SELECT l.ledger_transaction_id INTO unbalanced
    FROM ledger_entries l
    WHERE l.ledger_transaction_id IN (SELECT DISTINCT ledger_transaction_id FROM written)
    GROUP BY l.ledger_transaction_id
    HAVING sum(l.amount_minor) <> 0 OR count(DISTINCT l.currency) <> 1
    LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER ledger_transactions_balance
    AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_transactions_balance();

CREATE FUNCTION ledger_entries_are_final() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are append-only; post a correcting transaction instead'
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER ledger_entries_are_final
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_are_final();
