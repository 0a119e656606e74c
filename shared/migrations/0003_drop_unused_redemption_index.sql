-- No query reads redemptions by customer (a customer's history comes from
-- customer_coupons), yet every committed coupon wrote a leaf page of this index at a
-- random place: one random 4 KiB page per commit, written to the WAL and checkpointed
-- again into the database (measured with the lane benchmark's disk column).
DROP INDEX IF EXISTS redemptions_customer;
