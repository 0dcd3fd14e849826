-- The trace context that created each run, work item and charge attempt (W3C traceparent as JSON),
-- so that whoever works it later, in any pod, continues the same trace.
ALTER TABLE runs ADD COLUMN trace_context JSONB NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE work_items ADD COLUMN trace_context JSONB NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE transactions ADD COLUMN trace_context JSONB NOT NULL DEFAULT '{}'::jsonb;
