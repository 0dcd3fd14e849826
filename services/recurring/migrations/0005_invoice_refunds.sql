-- What the gateway has given back of an invoice's payment (payment.refunded, full or partial).
ALTER TABLE invoices ADD COLUMN refunded_minor bigint NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0);
