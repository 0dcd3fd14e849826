-- Subscriptions, their history, billing runs and work items, invoices, transactions, the ledger.

CREATE TABLE subscriptions (
    subscription_id      TEXT PRIMARY KEY,
    account_id           TEXT NOT NULL,
    merchant_id          TEXT NOT NULL,
    status               TEXT NOT NULL,
    plan_code            TEXT NOT NULL DEFAULT '',
    plan_version         INT NOT NULL DEFAULT 0,
    amount_minor         BIGINT NOT NULL,
    currency             TEXT NOT NULL,
    frequency            TEXT NOT NULL,
    start_date           DATE NOT NULL,
    anchor_day           INT NOT NULL,
    method_type          TEXT NOT NULL,
    gateway_token        TEXT NOT NULL,
    trial_days           INT NOT NULL DEFAULT 0,
    trial_end            DATE,
    current_period_start DATE NOT NULL,
    current_period_end   DATE NOT NULL,
    next_billing_date    DATE,
    tier_mapped          BOOLEAN NOT NULL DEFAULT false,
    cancel_at_period_end BOOLEAN NOT NULL DEFAULT false,
    version              BIGINT NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL
);
CREATE INDEX subscriptions_due ON subscriptions (frequency, next_billing_date) WHERE next_billing_date IS NOT NULL;
CREATE INDEX subscriptions_account ON subscriptions (account_id);

CREATE TABLE subscription_history (
    id              BIGSERIAL PRIMARY KEY,
    subscription_id TEXT NOT NULL REFERENCES subscriptions,
    changes         JSONB NOT NULL,
    actor           TEXT NOT NULL,
    cause_event_id  TEXT NOT NULL DEFAULT '',
    reason          TEXT NOT NULL DEFAULT '',
    changed_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX subscription_history_sub ON subscription_history (subscription_id, id);

-- Proration lines waiting for the subscription's next invoice.
CREATE TABLE pending_prorations (
    id              BIGSERIAL PRIMARY KEY,
    subscription_id TEXT NOT NULL REFERENCES subscriptions,
    description     TEXT NOT NULL,
    amount_minor    BIGINT NOT NULL,
    currency        TEXT NOT NULL,
    invoice_id      TEXT
);
CREATE INDEX pending_prorations_open ON pending_prorations (subscription_id) WHERE invoice_id IS NULL;

CREATE TABLE idempotency_keys (
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    result_ref   TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (scope, key)
);

CREATE TABLE runs (
    seq             BIGSERIAL UNIQUE,
    run_id          TEXT PRIMARY KEY,
    billing_date    DATE NOT NULL,
    kind            TEXT NOT NULL,
    state           TEXT NOT NULL,
    dry_run         BOOLEAN NOT NULL DEFAULT false,
    halted_gateways TEXT[] NOT NULL DEFAULT '{}',
    dry_due         BIGINT NOT NULL DEFAULT 0,
    dry_skipped     BIGINT NOT NULL DEFAULT 0,
    started_at      TIMESTAMPTZ NOT NULL,
    finished_at     TIMESTAMPTZ
);
-- One real run per date and kind, whoever creates it.
CREATE UNIQUE INDEX runs_one_per_date ON runs (billing_date, kind) WHERE NOT dry_run;

CREATE TABLE work_items (
    id              BIGSERIAL PRIMARY KEY,
    run_id          TEXT NOT NULL REFERENCES runs,
    subscription_id TEXT NOT NULL REFERENCES subscriptions,
    due_date        DATE NOT NULL,
    -- subscription + due date: the same occurrence is never worked twice, by any run.
    occurrence_key  TEXT NOT NULL UNIQUE,
    gateway         TEXT NOT NULL,
    status          TEXT NOT NULL,
    -- Who holds the item now; a worker whose lease ran out finds another token and writes nothing.
    claim_token     TEXT,
    -- Leases and deferrals use the database's time, shared by every pod (not the billing clock).
    lease_until     TIMESTAMPTZ,
    not_before      TIMESTAMPTZ,
    invoice_id      TEXT,
    detail          TEXT NOT NULL DEFAULT ''
);
CREATE INDEX work_items_open ON work_items (id) WHERE status IN ('pending', 'claimed', 'deferred');
CREATE INDEX work_items_run ON work_items (run_id, status);

CREATE TABLE invoices (
    seq             BIGSERIAL UNIQUE,
    invoice_id      TEXT PRIMARY KEY,
    subscription_id TEXT NOT NULL REFERENCES subscriptions,
    account_id      TEXT NOT NULL,
    merchant_id     TEXT NOT NULL,
    occurrence_key  TEXT NOT NULL UNIQUE,
    status          TEXT NOT NULL,
    billing_date    DATE NOT NULL,
    period_start    DATE NOT NULL,
    period_end      DATE NOT NULL,
    total_minor     BIGINT NOT NULL,
    credit_applied  BIGINT NOT NULL,
    amount_due      BIGINT NOT NULL,
    currency        TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    paid_at         TIMESTAMPTZ
);
CREATE INDEX invoices_subscription ON invoices (subscription_id, seq);
CREATE INDEX invoices_account ON invoices (account_id, seq);

CREATE TABLE invoice_lines (
    invoice_id   TEXT NOT NULL REFERENCES invoices,
    position     INT NOT NULL,
    kind         TEXT NOT NULL,
    description  TEXT NOT NULL,
    quantity     BIGINT NOT NULL,
    unit_price   TEXT NOT NULL DEFAULT '',
    amount_minor BIGINT NOT NULL,
    PRIMARY KEY (invoice_id, position)
);

-- Every charge attempt, successful or not (failure_type says why not).
CREATE TABLE transactions (
    transaction_id  TEXT PRIMARY KEY,
    invoice_id      TEXT NOT NULL REFERENCES invoices,
    attempt         INT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    -- Dunning's key for RetryInvoicePayment; empty for the run's own attempts.
    retry_key       TEXT,
    payment_id      TEXT NOT NULL DEFAULT '',
    gateway         TEXT NOT NULL DEFAULT '',
    status          TEXT NOT NULL,
    failure_type    TEXT NOT NULL DEFAULT 'none',
    decline_kind    TEXT NOT NULL DEFAULT 'none',
    decline_code    TEXT NOT NULL DEFAULT '',
    retryable       BOOLEAN NOT NULL DEFAULT false,
    amount_minor    BIGINT NOT NULL,
    currency        TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (invoice_id, attempt)
);
CREATE UNIQUE INDEX transactions_retry_key ON transactions (retry_key) WHERE retry_key IS NOT NULL;
CREATE INDEX transactions_payment ON transactions (payment_id);

CREATE TABLE ledger_entries (
    entry_id              BIGSERIAL PRIMARY KEY,
    ledger_transaction_id TEXT NOT NULL,
    customer              TEXT NOT NULL,
    account               TEXT NOT NULL,
    amount_minor          BIGINT NOT NULL,
    currency              TEXT NOT NULL,
    kind                  TEXT NOT NULL,
    reference             TEXT NOT NULL,
    created_at            TIMESTAMPTZ NOT NULL
);
CREATE INDEX ledger_entries_customer ON ledger_entries (customer, entry_id);
CREATE INDEX ledger_entries_account ON ledger_entries (account);
CREATE INDEX ledger_entries_transaction ON ledger_entries (ledger_transaction_id);
