-- Idempotency keys move to the common table (billing_common.idempotency) every service shares.
INSERT INTO idempotent_calls (scope, key, fingerprint, answer, created_at)
SELECT scope, key, request_hash, NULLIF(result_ref, ''), created_at FROM idempotency_keys;
DROP TABLE idempotency_keys;
