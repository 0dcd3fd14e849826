-- The usage ledger becomes partitioned by month of `occurred_at` (partitions are made and dropped
-- by billing_common.partitions.maintain, run with the migrations), so a year of usage is dropped
-- a month at a time after QUOTA_USAGE_RETENTION instead of growing one table.
--
-- A unique key of a partitioned table must hold its partition key, and a retry of an event that
-- named no `occurred_at` takes the time of the retry: (tenant, key, occurred_at) would let it in
-- a second time. So the idempotency keys get a table of their own, unique on (tenant, key) as
-- before, forgotten with the partition their records lived in.

ALTER TABLE usage_records RENAME TO usage_records_unpartitioned;
ALTER INDEX usage_records_pkey RENAME TO usage_records_unpartitioned_pkey;
ALTER INDEX usage_records_window RENAME TO usage_records_unpartitioned_window;
ALTER INDEX usage_records_occurred RENAME TO usage_records_unpartitioned_occurred;
ALTER TABLE usage_records_unpartitioned
    RENAME CONSTRAINT usage_records_tenant_id_idempotency_key_key TO usage_records_unpartitioned_key;

CREATE TABLE usage_keys (
    tenant_id       TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    occurred_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, idempotency_key)
);
CREATE INDEX usage_keys_occurred ON usage_keys (occurred_at);

CREATE TABLE usage_records (
    id              BIGINT NOT NULL DEFAULT nextval('usage_records_id_seq'),
    tenant_id       TEXT NOT NULL,
    key             TEXT NOT NULL,
    delta           BIGINT NOT NULL,
    idempotency_key TEXT NOT NULL,
    occurred_at     TIMESTAMPTZ NOT NULL,
    period_start    TIMESTAMPTZ NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);
ALTER SEQUENCE usage_records_id_seq OWNED BY usage_records.id;
CREATE TABLE usage_records_default PARTITION OF usage_records DEFAULT;
CREATE INDEX usage_records_window ON usage_records (tenant_id, key, period_start);
CREATE INDEX usage_records_occurred ON usage_records (tenant_id, occurred_at);

INSERT INTO usage_records SELECT * FROM usage_records_unpartitioned;
INSERT INTO usage_keys (tenant_id, idempotency_key, occurred_at)
    SELECT tenant_id, idempotency_key, occurred_at FROM usage_records_unpartitioned;
DROP TABLE usage_records_unpartitioned;
