-- The outbox and the inbox become partitioned by time (partitions are made and dropped by
-- billing_common.partitions.maintain, run with the migrations): a month-end's events are dropped
-- a partition at a time once relayed and older than the retention, instead of growing one table.
-- A unique key of a partitioned table holds its partition key: the outbox's is its creation time,
-- the inbox's the event's own `occurred_at`, which every delivery of an event carries unchanged.
-- The rows are copied into the default partition; the first maintenance moves them to theirs.

ALTER TABLE outbox RENAME TO outbox_unpartitioned;
ALTER INDEX outbox_unpublished RENAME TO outbox_unpartitioned_unpublished;
ALTER INDEX outbox_pkey RENAME TO outbox_unpartitioned_pkey;
ALTER INDEX outbox_event_id_key RENAME TO outbox_unpartitioned_event_id_key;
CREATE TABLE outbox (
    id           BIGINT NOT NULL DEFAULT nextval('outbox_id_seq'),
    event_id     UUID NOT NULL,
    event_type   TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    headers      JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ,
    PRIMARY KEY (id, created_at),
    UNIQUE (event_id, created_at)
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE outbox_id_seq OWNED BY outbox.id;
CREATE TABLE outbox_default PARTITION OF outbox DEFAULT;
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
INSERT INTO outbox SELECT * FROM outbox_unpartitioned;
DROP TABLE outbox_unpartitioned;

-- Rows handled before this migration did not keep the event's time; their handling time stands
-- in for it (an event is handled after it occurs, so they are kept at least as long).
ALTER TABLE inbox RENAME TO inbox_unpartitioned;
ALTER INDEX inbox_pkey RENAME TO inbox_unpartitioned_pkey;
CREATE TABLE inbox (
    event_id    UUID NOT NULL,
    event_type  TEXT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    handled_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE inbox_default PARTITION OF inbox DEFAULT;
INSERT INTO inbox (event_id, event_type, occurred_at, handled_at)
    SELECT event_id, event_type, handled_at, handled_at FROM inbox_unpartitioned;
DROP TABLE inbox_unpartitioned;

-- Per partitioned table, the instant before which its rows may have been dropped: the consumer
-- parks an event older than the inbox's instead of handling it a second time.
CREATE TABLE partition_watermarks (
    table_name       TEXT PRIMARY KEY,
    forgotten_before TIMESTAMPTZ NOT NULL
);
