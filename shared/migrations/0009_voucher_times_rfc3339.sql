-- The time a Coupontools session was validated, as pulled before: Coupontools' own
-- `YYYY-MM-DD HH:MM:SS` (UTC). The voucher API gives every time as RFC 3339 UTC
-- (`validatedAt`, docs/openapi.json), as a lane's own validation stores it: pulls now
-- convert, and this converts what is stored.
UPDATE vouchers SET validated_at = replace(validated_at, ' ', 'T') || 'Z'
WHERE validated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]';
