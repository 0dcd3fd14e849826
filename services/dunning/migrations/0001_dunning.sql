-- Retry policies per merchant; merchant_id '' is the default policy.
CREATE TABLE policies (
    merchant_id       TEXT PRIMARY KEY,
    max_attempts      INT NOT NULL,
    max_window        INTERVAL NOT NULL,
    schedule_kind     TEXT NOT NULL CHECK (schedule_kind IN ('fixed', 'adaptive')),
    day_offsets       INT[] NOT NULL DEFAULT '{}',
    min_gap           INTERVAL,
    max_gap           INTERVAL,
    exhausted_action  TEXT NOT NULL,
    reminder_lead     INTERVAL NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);

-- One case per invoice (the unique constraint backs the event inbox against duplicates).
CREATE TABLE cases (
    case_id          UUID PRIMARY KEY,
    seq              BIGSERIAL NOT NULL UNIQUE,
    invoice_id       TEXT NOT NULL UNIQUE,
    subscription_id  TEXT NOT NULL,
    account_id       TEXT NOT NULL,
    merchant_id      TEXT NOT NULL,
    amount_minor     BIGINT NOT NULL,
    currency         TEXT NOT NULL,
    state            TEXT NOT NULL,
    failure_type     TEXT NOT NULL,
    decline_kind     TEXT NOT NULL,
    decline_code     TEXT NOT NULL,
    retryable        BOOLEAN NOT NULL,
    first_failed_at  TIMESTAMPTZ NOT NULL,
    opened_at        TIMESTAMPTZ NOT NULL,
    -- When a worker must act: next attempt, end of an attempt's lease, or end of the window.
    due_at           TIMESTAMPTZ,
    reminder_at      TIMESTAMPTZ,
    ended_at         TIMESTAMPTZ,
    version          BIGINT NOT NULL
);
CREATE INDEX cases_due ON cases (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX cases_reminder ON cases (reminder_at) WHERE reminder_at IS NOT NULL;
CREATE INDEX cases_by_state ON cases (state, seq);
CREATE INDEX cases_by_merchant ON cases (merchant_id, seq);
CREATE INDEX cases_by_account ON cases (account_id, seq);
CREATE INDEX cases_by_subscription ON cases (subscription_id) WHERE ended_at IS NULL;

CREATE TABLE attempts (
    case_id              UUID NOT NULL REFERENCES cases (case_id),
    number               INT NOT NULL,
    scheduled_at         TIMESTAMPTZ NOT NULL,
    estimated_success_bp INT NOT NULL,
    sample_size          BIGINT NOT NULL,
    reason               TEXT NOT NULL,
    outcome              TEXT NOT NULL,
    decline_code         TEXT NOT NULL,
    attempted_at         TIMESTAMPTZ,
    PRIMARY KEY (case_id, number)
);

-- Every state change with its cause, append-only.
CREATE TABLE case_history (
    id          BIGSERIAL PRIMARY KEY,
    case_id     UUID NOT NULL REFERENCES cases (case_id),
    from_state  TEXT NOT NULL,
    to_state    TEXT NOT NULL,
    cause       TEXT NOT NULL,
    detail      TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX case_history_case ON case_history (case_id, id);

-- The estimator's training data: one row per attempt whose outcome is known.
CREATE TABLE attempt_outcomes (
    case_id                  UUID NOT NULL,
    attempt                  INT NOT NULL,
    decline_code             TEXT NOT NULL,
    attempt_ordinal          INT NOT NULL,
    days_since_first_failure INT NOT NULL,
    weekday                  SMALLINT NOT NULL,
    hour                     SMALLINT NOT NULL,
    succeeded                BOOLEAN NOT NULL,
    attempted_at             TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (case_id, attempt)
);
CREATE INDEX attempt_outcomes_time ON attempt_outcomes (attempted_at);
CREATE INDEX cases_ended ON cases (ended_at) WHERE ended_at IS NOT NULL;
