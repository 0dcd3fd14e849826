-- The suite's test clock as this service last applied it (billing_common.suite_clock): a
-- restarted pod resumes from here. One row at most; empty while the test clock was never set.
CREATE TABLE suite_clock (
    singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    instant   TIMESTAMPTZ NOT NULL
);
