-- Tables every service has in its own schema: the event outbox and inbox, and fencing tokens.

CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    event_id     UUID NOT NULL UNIQUE,
    event_type   TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    headers      JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE inbox (
    event_id   UUID PRIMARY KEY,
    event_type TEXT NOT NULL,
    handled_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The highest fencing token that has written to each protected resource.
CREATE TABLE fencing_tokens (
    resource TEXT PRIMARY KEY,
    token    BIGINT NOT NULL
);
