-- The plan catalog: one row per plan version; plan_heads holds the current version and retirement.
CREATE TABLE plans (
    code               TEXT NOT NULL,
    version            INT NOT NULL,
    name               TEXT NOT NULL,
    price_minor        BIGINT NOT NULL,
    currency           TEXT NOT NULL,
    frequency          TEXT NOT NULL,
    trial_days         INT NOT NULL,
    entitlements       JSONB NOT NULL,
    threshold_percents INT[] NOT NULL,
    is_free_fallback   BOOLEAN NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (code, version)
);

CREATE TABLE plan_heads (
    code            TEXT PRIMARY KEY,
    current_version INT NOT NULL,
    retired         BOOLEAN NOT NULL DEFAULT false,
    created_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE add_ons (
    code         TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    price_minor  BIGINT NOT NULL,
    currency     TEXT NOT NULL,
    entitlements JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE tenant_add_ons (
    tenant_id   TEXT NOT NULL,
    add_on_code TEXT NOT NULL REFERENCES add_ons (code),
    PRIMARY KEY (tenant_id, add_on_code)
);

CREATE TABLE tier_plans (
    tier      TEXT PRIMARY KEY,
    plan_code TEXT NOT NULL
);

-- Results of state-changing RPCs by idempotency key: the same key never does the work twice.
CREATE TABLE idempotency_keys (
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    result_ref   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

-- Projection of recurring's subscriptions (from subscription.* snapshots).
CREATE TABLE subscriptions (
    subscription_id       TEXT PRIMARY KEY,
    tenant_id             TEXT NOT NULL,
    status                TEXT NOT NULL,
    plan_code             TEXT NOT NULL,
    plan_version          INT NOT NULL,
    period_start          TIMESTAMPTZ,
    period_end            TIMESTAMPTZ,
    previous_period_start TIMESTAMPTZ,
    snapshot_version      BIGINT NOT NULL
);
CREATE INDEX subscriptions_tenant ON subscriptions (tenant_id);

CREATE TABLE overrides (
    tenant_id TEXT NOT NULL,
    key       TEXT NOT NULL,
    "limit"   BIGINT,
    behaviour TEXT,
    PRIMARY KEY (tenant_id, key)
);

CREATE TABLE grants (
    grant_id   TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    key        TEXT NOT NULL,
    quantity   BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX grants_tenant ON grants (tenant_id, expires_at);

-- Every counted usage event; the source of truth the Redis counters are rebuilt from.
CREATE TABLE usage_records (
    id              BIGSERIAL PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    key             TEXT NOT NULL,
    delta           BIGINT NOT NULL,
    idempotency_key TEXT NOT NULL,
    occurred_at     TIMESTAMPTZ NOT NULL,
    period_start    TIMESTAMPTZ NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX usage_records_window ON usage_records (tenant_id, key, period_start);
CREATE INDEX usage_records_occurred ON usage_records (tenant_id, occurred_at);

-- One row per threshold crossing that was published: the guard of "once per period".
CREATE TABLE threshold_alerts (
    tenant_id    TEXT NOT NULL,
    key          TEXT NOT NULL,
    period_start TIMESTAMPTZ NOT NULL,
    percent      INT NOT NULL,
    used         BIGINT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key, period_start, percent)
);
