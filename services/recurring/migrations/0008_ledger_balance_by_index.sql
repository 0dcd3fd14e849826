-- The balance check read every ledger entry once the table was large: the planner cannot size the
-- statement's transition table and chose to scan `ledger_entries` whole for each statement, so
-- posting slowed as the ledger grew. Each written transaction is now summed through the
-- `ledger_entries_transaction` index, one transaction at a time: the cost follows what was written.

CREATE OR REPLACE FUNCTION ledger_transactions_balance() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unbalanced TEXT;
BEGIN
    SELECT w.ledger_transaction_id INTO unbalanced
    FROM (SELECT DISTINCT ledger_transaction_id FROM written) w
    CROSS JOIN LATERAL (
        SELECT sum(l.amount_minor) AS total, count(DISTINCT l.currency) AS currencies
        FROM ledger_entries l
        WHERE l.ledger_transaction_id = w.ledger_transaction_id
    ) posted
    WHERE posted.total <> 0 OR posted.currencies <> 1
    LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$;
