-- Offers: the coupon catalog the lanes see. `id` is the short local id (<= 15 chars);
-- (provider, provider_ref) is the upstream identity it maps to.
CREATE TABLE offers (
    id                      TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 15),
    provider                TEXT NOT NULL,
    provider_ref            TEXT NOT NULL,
    short_description       TEXT NOT NULL DEFAULT '',
    requirement_description TEXT NOT NULL DEFAULT '',
    long_description        TEXT NOT NULL DEFAULT '',
    category                TEXT NOT NULL DEFAULT '',
    brand                   TEXT NOT NULL DEFAULT '',
    start_date              TEXT NOT NULL,
    end_date                TEXT NOT NULL,
    image_url               TEXT,
    targeted                INTEGER NOT NULL DEFAULT 0,
    enabled                 INTEGER NOT NULL DEFAULT 1,
    featured                INTEGER NOT NULL DEFAULT 0,
    requires_clip           INTEGER NOT NULL DEFAULT 1,
    rule                    TEXT NOT NULL,
    receipt_alias           TEXT NOT NULL DEFAULT '',
    reduces_tax             INTEGER NOT NULL DEFAULT 1,
    coupon_type             TEXT NOT NULL DEFAULT '',
    external_id             TEXT NOT NULL DEFAULT '',
    per_customer_limit      INTEGER,
    global_limit            INTEGER,
    loyalty_cost            INTEGER,
    redeemed_count          INTEGER NOT NULL DEFAULT 0,
    extra                   TEXT NOT NULL DEFAULT '{}',
    updated_at              INTEGER NOT NULL,
    UNIQUE (provider, provider_ref)
);
-- Offers every customer sees (not targeted), and offers that apply without clipping:
-- both are read on every metadata request or update, so they must not scan the catalog.
CREATE INDEX offers_open ON offers (targeted, requires_clip, enabled, end_date);
CREATE INDEX offers_auto ON offers (requires_clip, enabled, end_date) WHERE requires_clip = 0;
CREATE INDEX offers_end ON offers (end_date);

CREATE TABLE customers (
    id             TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 16),
    first_name     TEXT,
    last_name      TEXT,
    email          TEXT,
    phone          TEXT,
    provider       TEXT,
    provider_ref   TEXT,
    loyalty_id     TEXT,
    points_balance INTEGER NOT NULL DEFAULT 0,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX customers_phone ON customers (phone) WHERE phone IS NOT NULL;
CREATE INDEX customers_email ON customers (email COLLATE NOCASE) WHERE email IS NOT NULL;

-- One row per (customer, offer) the customer has a relation to. `pending` is not stored
-- here: a coupon is pending while a live row of `holds` lists it.
CREATE TABLE customer_coupons (
    customer_id     TEXT NOT NULL REFERENCES customers (id),
    offer_id        TEXT NOT NULL REFERENCES offers (id),
    state           TEXT NOT NULL CHECK (state IN ('available', 'clipped', 'redeemed', 'expired')),
    redemptions     INTEGER NOT NULL DEFAULT 0,
    state_at        INTEGER NOT NULL,
    -- Local changes not yet acknowledged upstream: a pull must not overwrite them.
    local_dirty     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (customer_id, offer_id)
) WITHOUT ROWID;

-- The coupons an open sale holds (pending), one row per sale: a transaction update
-- rewrites one row whatever the number of coupons. A hold is live until `expires_at`.
-- At most one live hold lists a given coupon of a customer: enforced by the writer,
-- which re-reads the customer's holds before writing one (edge-server lane::update).
CREATE TABLE holds (
    site        TEXT NOT NULL,
    txn_id      TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    -- JSON arrays of offer ids: every held coupon, and those of them that are optional.
    coupons     TEXT NOT NULL,
    optional    TEXT NOT NULL DEFAULT '[]',
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (site, txn_id)
) WITHOUT ROWID;
CREATE INDEX holds_customer ON holds (customer_id);
-- The sweeper finds lapsed holds through this index instead of scanning every hold inside
-- the writer. Expiry times only grow, so new entries land on the index's last page.
CREATE INDEX holds_expiry ON holds (expires_at);

-- Sales the lanes told us about. A committed sale keeps the answer it was given, so a
-- repeated commit replays it.
CREATE TABLE transactions (
    site            TEXT NOT NULL,
    txn_id          TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('open', 'cancelled', 'committed')),
    terminal        INTEGER,
    cashier         INTEGER,
    updated_at      INTEGER NOT NULL,
    last_update     TEXT,
    commit_request  TEXT,
    commit_response TEXT,
    committed_at    INTEGER,
    PRIMARY KEY (site, txn_id)
) WITHOUT ROWID;

CREATE TABLE redemptions (
    id            INTEGER PRIMARY KEY,
    site          TEXT NOT NULL,
    txn_id        TEXT NOT NULL,
    customer_id   TEXT NOT NULL,
    offer_id      TEXT NOT NULL,
    discount      INTEGER NOT NULL,
    redeemed_at   INTEGER NOT NULL,
    -- 1 when the coupon had meanwhile been used elsewhere: acknowledged, flagged for store IT.
    conflict      INTEGER NOT NULL DEFAULT 0,
    by_empty_list INTEGER NOT NULL DEFAULT 0,
    UNIQUE (site, txn_id, offer_id)
);
CREATE INDEX redemptions_customer ON redemptions (customer_id, redeemed_at);

-- Single-use barcodes (Coupontools sessions, Convercus codes, Koupon offer barcodes).
CREATE TABLE vouchers (
    code            TEXT PRIMARY KEY,
    provider        TEXT NOT NULL,
    provider_ref    TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    value           INTEGER NOT NULL DEFAULT 0,
    min_spend       INTEGER NOT NULL DEFAULT 0,
    valid_from      TEXT,
    valid_until     TEXT,
    state           TEXT NOT NULL CHECK (state IN ('active', 'locked', 'validated', 'void')),
    lock_site       TEXT,
    lock_txn        TEXT,
    lock_expires_at INTEGER,
    validated_at    TEXT,
    validated_site  TEXT,
    validated_txn   TEXT,
    money_spent     INTEGER,
    local_dirty     INTEGER NOT NULL DEFAULT 0,
    updated_at      INTEGER NOT NULL
) WITHOUT ROWID;

-- Everything the lanes did that a provider must hear about, in one durable queue.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    provider        TEXT NOT NULL,
    operation       TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    ordering_key    TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'inflight', 'delivered', 'dead', 'discarded')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX outbox_ready ON outbox (state, next_attempt_at);
CREATE INDEX outbox_ordering ON outbox (ordering_key, id) WHERE state IN ('pending', 'inflight', 'dead');

CREATE TABLE sync_state (
    provider        TEXT PRIMARY KEY,
    last_success_at INTEGER,
    last_error      TEXT,
    last_error_at   INTEGER
);

-- Small counters; `catalog_version` changes whenever an offer's definition changes (not its
-- redemption count), so processes can keep the catalog in memory and reload it only then.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('catalog_version', 0);
CREATE TRIGGER offers_inserted AFTER INSERT ON offers
BEGIN UPDATE meta SET value = value + 1 WHERE key = 'catalog_version'; END;
CREATE TRIGGER offers_deleted AFTER DELETE ON offers
BEGIN UPDATE meta SET value = value + 1 WHERE key = 'catalog_version'; END;
CREATE TRIGGER offers_changed AFTER UPDATE OF id, provider, provider_ref, short_description,
    requirement_description, long_description, category, brand, start_date, end_date, image_url,
    targeted, enabled, featured, requires_clip, rule, receipt_alias, reduces_tax, coupon_type,
    external_id, per_customer_limit, global_limit, loyalty_cost ON offers
BEGIN UPDATE meta SET value = value + 1 WHERE key = 'catalog_version'; END;
