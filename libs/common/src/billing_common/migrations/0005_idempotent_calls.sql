-- One row per idempotency key of a state-changing call (billing_common.idempotency): the call's
-- scope, the fingerprint of the request that claimed the key, and the call's answer once it has
-- finished (NULL while it is in flight).
CREATE TABLE idempotent_calls (
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    answer      TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
