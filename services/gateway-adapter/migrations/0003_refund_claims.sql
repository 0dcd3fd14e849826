-- A refund is claimed (its row written, the amount held against the payment) before the gateway is
-- called and recorded after it answers, so no row lock is held across the call. A claim not yet
-- recorded has no recorded_at; a retry with its key calls the gateway again with the same key.
ALTER TABLE refunds ADD COLUMN recorded_at timestamptz;
UPDATE refunds SET recorded_at = created_at;
CREATE INDEX refunds_unrecorded ON refunds (payment_id) WHERE recorded_at IS NULL;
