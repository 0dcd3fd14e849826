-- The trace context of the Charge call that created each payment (W3C traceparent as JSON): the
-- janitor's look-up of an unresolved payment continues it, and a webhook about it links to it.
ALTER TABLE payments ADD COLUMN trace_context JSONB NOT NULL DEFAULT '{}'::jsonb;
