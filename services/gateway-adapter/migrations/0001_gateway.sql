-- Payments: one row per idempotency key; the key is released (set to NULL) after the retention period.
CREATE TABLE payments (
    payment_id          uuid PRIMARY KEY,
    idempotency_key     text UNIQUE,
    request_fingerprint text NOT NULL,
    merchant_id         text NOT NULL,
    method_type         text NOT NULL,
    gateway_token       text NOT NULL,
    amount_minor        bigint NOT NULL CHECK (amount_minor > 0),
    currency            char(3) NOT NULL,
    refunded_minor      bigint NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0 AND refunded_minor <= amount_minor),
    gateway             text NOT NULL,
    status              text NOT NULL,
    normalized_code     text,
    failure_type        text,
    decline_kind        text,
    retryable           boolean,
    gateway_code        text NOT NULL DEFAULT '',
    gateway_message     text NOT NULL DEFAULT '',
    gateway_reference   text NOT NULL DEFAULT '',
    caller_reference    text NOT NULL DEFAULT '',
    metadata            jsonb NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    -- When the janitor next asks the gateway about an unresolved (PROCESSING or UNKNOWN) payment.
    next_check_at       timestamptz,
    checks_done         integer NOT NULL DEFAULT 0
);
CREATE INDEX payments_due_checks ON payments (next_check_at) WHERE status IN ('PROCESSING', 'UNKNOWN');
CREATE INDEX payments_gateway_reference ON payments (gateway_reference) WHERE gateway_reference <> '';
CREATE INDEX payments_key_age ON payments (created_at) WHERE idempotency_key IS NOT NULL;

CREATE TABLE refunds (
    refund_id           uuid PRIMARY KEY,
    payment_id          uuid NOT NULL REFERENCES payments (payment_id),
    idempotency_key     text NOT NULL UNIQUE,
    request_fingerprint text NOT NULL,
    amount_minor        bigint NOT NULL CHECK (amount_minor > 0),
    currency            char(3) NOT NULL,
    reason              text NOT NULL DEFAULT '',
    gateway_reference   text NOT NULL DEFAULT '',
    created_at          timestamptz NOT NULL
);

-- Webhook event ids already applied: a redelivered notice changes nothing.
CREATE TABLE webhook_events (
    source      text NOT NULL,
    event_id    text NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (source, event_id)
);

-- The sandbox gateway's own side: every request that reached it, as a real gateway would keep.
CREATE TABLE sandbox_charges (
    charge_id        text PRIMARY KEY,
    idempotency_key  text NOT NULL,
    merchant_id      text NOT NULL,
    gateway          text NOT NULL,
    token            text NOT NULL,
    amount_minor     bigint NOT NULL,
    currency         char(3) NOT NULL,
    outcome          text NOT NULL,
    created_at       timestamptz NOT NULL,
    -- ACH: when the bank's answer is due, and whether the notice went out.
    clears_at        timestamptz,
    cleared          boolean NOT NULL DEFAULT false
);
CREATE INDEX sandbox_charges_key ON sandbox_charges (idempotency_key);
CREATE INDEX sandbox_charges_clearing ON sandbox_charges (clears_at) WHERE NOT cleared AND clears_at IS NOT NULL;

CREATE TABLE sandbox_refunds (
    refund_id       text PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    charge_id       text NOT NULL REFERENCES sandbox_charges (charge_id),
    amount_minor    bigint NOT NULL,
    created_at      timestamptz NOT NULL
);

-- How often each sandbox test token has been presented (tok_flaky_<n> declines n times).
CREATE TABLE sandbox_token_uses (
    token text PRIMARY KEY,
    uses  integer NOT NULL
);
