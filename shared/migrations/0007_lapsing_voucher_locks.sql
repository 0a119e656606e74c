-- Vouchers locked by a lane of this store, by when the lock lapses: the edge server's sweeper
-- releases lapsed locks and queues their unlock upstream (`repo::lapsed_voucher_locks`).
-- Only lane-locked rows enter this index, so the pulled vouchers pay nothing for it.
CREATE INDEX vouchers_lapsing ON vouchers (lock_expires_at) WHERE lock_site IS NOT NULL;
