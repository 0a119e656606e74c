-- Points spent at this store on optional (points-priced) coupons. Nothing upstream learns
-- of them, so an import (which sets `points_balance` from its file) subtracts them: the same
-- file imported again never gives a customer back the points they spent here.
ALTER TABLE customers ADD COLUMN points_spent INTEGER NOT NULL DEFAULT 0;
