-- The trace context that opened each case and scheduled each attempt (W3C traceparent as JSON):
-- the worker continues it when the attempt comes soon after, or links a new trace to it.
ALTER TABLE cases ADD COLUMN trace_context JSONB NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE attempts ADD COLUMN trace_context JSONB NOT NULL DEFAULT '{}'::jsonb;
