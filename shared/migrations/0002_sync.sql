-- Sync daemon (issue 3).

-- The provider's id of this customer's coupon when it differs per customer (Convercus
-- accountCouponId), and the redemption count upstream last reported for it.
ALTER TABLE customer_coupons ADD COLUMN provider_ref TEXT;
ALTER TABLE customer_coupons ADD COLUMN upstream_redemptions INTEGER;

-- Provider-specific notes the worker writes before sending an item, so a retry after an
-- unknown outcome can check what the provider already applied (JSON, e.g. the Convercus
-- redeemCount seen before the first attempt, or the time of the first attempt).
ALTER TABLE outbox ADD COLUMN progress TEXT;

-- Per provider: a sync asked for by an operator (`edge-ctl sync now`), when the last pull
-- started, and what it did.
ALTER TABLE sync_state ADD COLUMN requested_at INTEGER;
ALTER TABLE sync_state ADD COLUMN last_attempt_at INTEGER;
ALTER TABLE sync_state ADD COLUMN last_result TEXT;
