-- Store IT sees the redemptions flagged as conflicts (a commit listed a coupon already used,
-- held by another sale or expired; or a provider refused its redemption) in `edge-ctl
-- status` and the admin page, counted over the last 30 days (`repo::conflicts_since`).
-- Only flagged rows enter this index, so lane commits pay nothing for it.
CREATE INDEX redemptions_conflicts ON redemptions (redeemed_at) WHERE conflict = 1;
