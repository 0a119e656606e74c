-- A second code a voucher may be scanned by: a Coupontools session's own validation code,
-- shown to the shopper instead of the session id (coupontools.md §1). One row per session
-- either way, so it cannot be used twice; `repo::voucher` finds a row by code, else by
-- alias. Only rows with an alias enter the index.
ALTER TABLE vouchers ADD COLUMN alias TEXT;
CREATE INDEX vouchers_alias ON vouchers (alias) WHERE alias IS NOT NULL;
