-- Every write to the hierarchy, signals and current tiers takes a number from this sequence, so a
-- process can merge what changed since the last number it has seen into its in-memory model.
CREATE SEQUENCE estate_revision;

CREATE TABLE distributors (
    distributor_id TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    direct         BOOLEAN NOT NULL,
    active         BOOLEAN NOT NULL,
    revision       BIGINT NOT NULL
);
CREATE INDEX distributors_revision ON distributors (revision);

CREATE TABLE end_users (
    end_user_id    TEXT PRIMARY KEY,
    distributor_id TEXT NOT NULL,  -- '' for a standalone end user
    name           TEXT NOT NULL,
    active         BOOLEAN NOT NULL,
    revision       BIGINT NOT NULL
);
CREATE INDEX end_users_revision ON end_users (revision);

CREATE TABLE databases (
    database_id     TEXT PRIMARY KEY,
    end_user_id     TEXT NOT NULL,
    company_name    TEXT NOT NULL,
    schema_name     TEXT NOT NULL,
    inventory_mode  TEXT NOT NULL,
    sso_access      BOOLEAN NOT NULL,
    rest_api_access BOOLEAN NOT NULL,
    active          BOOLEAN NOT NULL,
    revision        BIGINT NOT NULL
);
CREATE INDEX databases_revision ON databases (revision);

-- The newest observation of each capability signal per account (end user or database).
CREATE TABLE signals (
    account_id  TEXT NOT NULL,
    kind        TEXT NOT NULL,
    value       TEXT NOT NULL,
    source      TEXT NOT NULL,
    observed_at TIMESTAMPTZ NOT NULL,
    revision    BIGINT NOT NULL,
    PRIMARY KEY (account_id, kind)
);
CREATE INDEX signals_revision ON signals (revision);

-- Each account's current tier: the head of its history.
CREATE TABLE account_tiers (
    account_id       TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    tier             SMALLINT NOT NULL,
    rule_id          TEXT NOT NULL,
    rule_set_version TEXT NOT NULL,
    evidence         JSONB NOT NULL,
    since            TIMESTAMPTZ NOT NULL,
    change_id        BIGINT NOT NULL,
    revision         BIGINT NOT NULL
);
CREATE INDEX account_tiers_revision ON account_tiers (revision);

-- Every tier change, append-only: the answer to "when and why did this account change tier".
CREATE TABLE tier_history (
    change_id         BIGSERIAL PRIMARY KEY,
    account_id        TEXT NOT NULL,
    kind              TEXT NOT NULL,
    previous_tier     SMALLINT,  -- NULL: the account's first tier
    new_tier          SMALLINT NOT NULL,
    rule_id           TEXT NOT NULL,
    rule_set_version  TEXT NOT NULL,
    evidence_before   JSONB NOT NULL,
    evidence_after    JSONB NOT NULL,
    scan_id           UUID,
    cause             TEXT NOT NULL,
    billed_account_id TEXT NOT NULL,
    effective_at      TIMESTAMPTZ NOT NULL,
    recorded_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX tier_history_account ON tier_history (account_id, effective_at, change_id);
CREATE INDEX tier_history_scan ON tier_history (scan_id, change_id);
CREATE INDEX tier_history_effective ON tier_history (effective_at, change_id);

-- Append-only, enforced twice: the service's role (the owner that runs this migration) loses the
-- UPDATE, DELETE and TRUNCATE privileges, and a trigger refuses them for anyone else.
CREATE FUNCTION tier_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'tier_history is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER tier_history_no_update_or_delete BEFORE UPDATE OR DELETE ON tier_history
    FOR EACH ROW EXECUTE FUNCTION tier_history_append_only();
CREATE TRIGGER tier_history_no_truncate BEFORE TRUNCATE ON tier_history
    FOR EACH STATEMENT EXECUTE FUNCTION tier_history_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON tier_history FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON tier_history FROM CURRENT_USER;

-- Scan records; a queued row is the work item the workers claim.
CREATE TABLE scans (
    seq                BIGSERIAL UNIQUE,
    scan_id            UUID PRIMARY KEY,
    kind               TEXT NOT NULL,
    trigger            TEXT NOT NULL,
    idempotency_key    TEXT NOT NULL UNIQUE,
    state              TEXT NOT NULL,
    queued_at          TIMESTAMPTZ NOT NULL,
    started_at         TIMESTAMPTZ,
    finished_at        TIMESTAMPTZ,
    accounts_evaluated BIGINT NOT NULL DEFAULT 0,
    changes            BIGINT NOT NULL DEFAULT 0,
    trace_id           TEXT NOT NULL DEFAULT '',
    trace_context      JSONB NOT NULL DEFAULT '{}'::jsonb,
    fencing_token      BIGINT,
    error              TEXT NOT NULL DEFAULT ''
);
CREATE INDEX scans_queued ON scans (kind, seq) WHERE state = 'queued';
CREATE INDEX scans_running ON scans (kind) WHERE state = 'running';
