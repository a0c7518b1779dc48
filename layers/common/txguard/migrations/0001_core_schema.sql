-- Transactions with the decision taken when each was stored, per-account running aggregates, and
-- versioned rule sets. Timestamps are stored at millisecond precision; amounts are exact decimals.

CREATE TABLE rule_sets (
    version     integer PRIMARY KEY,
    document    jsonb NOT NULL,
    comment     text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_by  text NOT NULL DEFAULT current_user
);

CREATE TABLE transactions (
    transaction_id    bigint PRIMARY KEY,
    account_id        bigint NOT NULL CHECK (account_id > 0),
    ts                timestamptz NOT NULL CHECK (ts = date_trunc('milliseconds', ts)),
    amount            numeric(19, 4) NOT NULL,
    currency          char(3) NOT NULL,
    merchant_id       text CHECK (char_length(merchant_id) BETWEEN 1 AND 64),
    fraud             boolean NOT NULL,
    score             numeric(5, 4) NOT NULL CHECK (score BETWEEN 0 AND 1),
    reasons           jsonb NOT NULL,
    rule_set_version  integer NOT NULL,  -- rule_sets.version; no foreign key: a per-row check would halve COPY speed
    stored_at         timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Point-in-time features read the account's recent history through this index (index-only with amount).
CREATE INDEX transactions_account_ts ON transactions (account_id, ts) INCLUDE (amount);
-- Merchant windows.
CREATE INDEX transactions_merchant_ts ON transactions (merchant_id, ts) INCLUDE (amount)
    WHERE merchant_id IS NOT NULL;
-- GET /is_fraud: an account's flagged transactions, newest first.
CREATE INDEX transactions_account_flagged ON transactions (account_id, ts DESC, transaction_id DESC)
    WHERE fraud;
-- GET /store_data without an account filter, in time order.
CREATE INDEX transactions_ts ON transactions (ts, transaction_id);

-- Running aggregates over each account's whole stored history, maintained in the same database
-- transaction as the insert, so a decision never has to re-read the history.
CREATE TABLE account_stats (
    account_id       bigint PRIMARY KEY,
    tx_count         bigint NOT NULL DEFAULT 0,
    amount_sum       numeric NOT NULL DEFAULT 0,
    amount_sum_sq    numeric NOT NULL DEFAULT 0,
    amount_max       numeric(19, 4),
    amount_max_ts    timestamptz,   -- earliest timestamp at which amount_max occurs
    first_ts         timestamptz,
    last_ts          timestamptz
);

-- What the functions may do, and nothing more: no DDL, no DELETE, no access to migration bookkeeping.
-- Roles are cluster-wide, so the group role may already exist (another database, a concurrent run).
DO $$
BEGIN
    CREATE ROLE txguard_service NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
GRANT USAGE ON SCHEMA public TO txguard_service;
GRANT SELECT, INSERT ON transactions TO txguard_service;
GRANT SELECT, INSERT, UPDATE ON account_stats TO txguard_service;
GRANT SELECT ON rule_sets TO txguard_service;

-- Millisecond epoch <-> timestamptz, exactly (integer interval arithmetic, no floating point).
CREATE FUNCTION txguard_ms_to_ts(ms bigint) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN timestamptz 'epoch' + ms * interval '1 millisecond';
CREATE FUNCTION txguard_ts_to_ms(ts timestamptz) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (extract(epoch FROM ts) * 1000)::bigint;
