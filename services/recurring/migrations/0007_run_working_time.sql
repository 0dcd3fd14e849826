-- When a run's work really started and ended, on the database server's clock: the run's
-- started_at and finished_at are on the service's clock, which the suite's test clock holds still
-- while a day's work runs. Runs made before this migration have no working time (NULL), not a
-- made-up one.
ALTER TABLE runs ADD COLUMN worked_from TIMESTAMPTZ;
ALTER TABLE runs ADD COLUMN worked_until TIMESTAMPTZ;
ALTER TABLE runs ALTER COLUMN worked_from SET DEFAULT clock_timestamp();
