-- Idempotency keys move to the common table (billing_common.idempotency) every service shares.
-- Pausing and resuming now claim their keys under their RPC's name, as every other call does.
INSERT INTO idempotent_calls (scope, key, fingerprint, answer)
SELECT CASE scope WHEN 'pause' THEN 'PauseSubscription' WHEN 'resume' THEN 'ResumeSubscription' ELSE scope END,
       key, request_hash, NULLIF(result_ref, '')
FROM idempotency_keys;
DROP TABLE idempotency_keys;
