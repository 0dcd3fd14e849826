-- Failure types and decline kinds are stored in the words every service shares (billing_common.payments),
-- which are lower case.
UPDATE payments SET failure_type = lower(failure_type), decline_kind = lower(decline_kind)
WHERE failure_type <> lower(failure_type) OR decline_kind <> lower(decline_kind);
