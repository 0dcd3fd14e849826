-- Items that keep failing for a reason of ours are parked after a number of tries, and a run that
-- makes no progress is reported as stalled.

-- Tries of the item that ended without an outcome for a reason of ours (an error while preparing
-- it, a usage summary that failed, a worker that stopped holding it); reset by ResumeRun.
ALTER TABLE work_items ADD COLUMN failures INT NOT NULL DEFAULT 0;

-- What the scheduler last saw of a running run: its open items, since when that number stands
-- (billing clock), and when the run was reported stalled (NULL: not stalled).
ALTER TABLE runs ADD COLUMN open_seen BIGINT;
ALTER TABLE runs ADD COLUMN progress_at TIMESTAMPTZ;
ALTER TABLE runs ADD COLUMN stalled_at TIMESTAMPTZ;
CREATE INDEX runs_running ON runs (kind, billing_date) WHERE state = 'running';
