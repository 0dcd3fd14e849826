-- A tenant's add-ons keep their history: one row per stretch a tenant held an add-on, from when it
-- was added until it was removed (open while held), so that a billing period can be charged for the
-- part of it each add-on was held. A tenant holds an add-on at most once at a time.
--
-- Add-ons attached before this migration were never billed; their stretch starts now, so no
-- customer is charged for time before add-ons were invoiced.

ALTER TABLE tenant_add_ons DROP CONSTRAINT tenant_add_ons_pkey;
ALTER TABLE tenant_add_ons
    ADD COLUMN stretch_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ADD COLUMN added_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN removed_at TIMESTAMPTZ,
    ADD CONSTRAINT tenant_add_ons_removed_after_added CHECK (removed_at >= added_at);
ALTER TABLE tenant_add_ons ALTER COLUMN added_at DROP DEFAULT;

CREATE UNIQUE INDEX tenant_add_ons_held ON tenant_add_ons (tenant_id, add_on_code) WHERE removed_at IS NULL;
CREATE INDEX tenant_add_ons_by_tenant ON tenant_add_ons (tenant_id, added_at);
