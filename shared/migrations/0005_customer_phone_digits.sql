-- Demographics look a customer up by the phone the lane sends: digits only, usually 10.
-- Stored phones come formatted from providers and imports ("(828)265-2907",
-- "+1 828 265 2907"), so the lookup compares the phone's digits, kept in their own indexed
-- column: `repo::phone_digits` computes them on every write of a customer's phone
-- (`repo::upsert_customer`), and this migration's hook fills them in for the rows already
-- stored (`repo::fill_phone_digits`). The index on the formatted phone has no query left.
ALTER TABLE customers ADD COLUMN phone_digits TEXT;
DROP INDEX customers_phone;
CREATE INDEX customers_phone_digits ON customers (phone_digits, id) WHERE phone_digits IS NOT NULL;
