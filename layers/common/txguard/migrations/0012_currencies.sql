-- Currencies are never mixed. Counts and times stay over all of an account's (merchant's) transactions; every
-- amount feature (sums, means, standard deviation, largest amount, ratio to the mean) is over the transactions in
-- the same currency as the one decided. So the amount totals are kept per currency: account_currency_stats beside
-- account_stats (which keeps the counts and times, and stays each account's write lock), and account_daily per
-- account, day and currency. Both are rebuilt here from the stored transactions (running this file again gives
-- the same tables). transaction_features, the SQL reference, is redefined with the same rule.

CREATE TABLE IF NOT EXISTS account_currency_stats (
    account_id     bigint NOT NULL,
    currency       char(3) NOT NULL,
    tx_count       bigint NOT NULL,
    amount_sum     numeric NOT NULL,
    amount_sum_sq  numeric NOT NULL,
    amount_max     numeric(19, 4),
    amount_max_ts  timestamptz,  -- earliest timestamp at which amount_max occurs in this currency
    PRIMARY KEY (account_id, currency)
);

DELETE FROM account_currency_stats;
INSERT INTO account_currency_stats (account_id, currency, tx_count, amount_sum, amount_sum_sq, amount_max,
                                    amount_max_ts)
SELECT s.account_id, s.currency, s.n, s.total, s.total_sq, s.largest,
       (SELECT min(x.ts) FROM transactions x
        WHERE x.account_id = s.account_id AND x.currency = s.currency AND x.amount = s.largest)
FROM (SELECT account_id, currency, count(*) AS n, sum(amount) AS total, sum(amount * amount) AS total_sq,
             max(amount) AS largest
      FROM transactions
      GROUP BY 1, 2) AS s;

-- A sum over several currencies means nothing: account_stats keeps the count, first and last timestamps only.
ALTER TABLE account_stats
    DROP COLUMN IF EXISTS amount_sum,
    DROP COLUMN IF EXISTS amount_sum_sq,
    DROP COLUMN IF EXISTS amount_max,
    DROP COLUMN IF EXISTS amount_max_ts;

DROP TABLE IF EXISTS account_daily;
CREATE TABLE account_daily (
    account_id     bigint NOT NULL,
    day            integer NOT NULL,  -- txguard_day(ts)
    currency       char(3) NOT NULL,
    tx_count       bigint NOT NULL,
    amount_sum     numeric NOT NULL,
    amount_sum_sq  numeric NOT NULL,
    amount_max     numeric(19, 4) NOT NULL,
    last_ts        timestamptz NOT NULL,
    PRIMARY KEY (account_id, day, currency)
);

INSERT INTO account_daily (account_id, day, currency, tx_count, amount_sum, amount_sum_sq, amount_max, last_ts)
SELECT account_id, txguard_day(ts), currency, count(*), sum(amount), sum(amount * amount), max(amount), max(ts)
FROM transactions
GROUP BY 1, 2, 3;

-- The tails read each row's currency with its amount: keep those reads index-only.
DROP INDEX IF EXISTS transactions_account_ts;
CREATE INDEX transactions_account_ts ON transactions (account_id, ts) INCLUDE (amount, currency);
DROP INDEX IF EXISTS transactions_merchant_ts;
CREATE INDEX transactions_merchant_ts ON transactions (merchant_id, ts) INCLUDE (amount, currency)
    WHERE merchant_id IS NOT NULL;

GRANT SELECT, INSERT, UPDATE ON account_currency_stats TO txguard_service;
GRANT SELECT, INSERT, UPDATE ON account_daily TO txguard_service;

-- Features of every transaction of one account, each judged only on what came before it; local-time features in
-- p_time_zone, merchant risk with a delay of p_label_delay_days. Amount features read the transaction's currency.
CREATE OR REPLACE FUNCTION transaction_features(
    p_account_id bigint, p_time_zone text DEFAULT 'UTC', p_label_delay_days integer DEFAULT 7
)
RETURNS TABLE (transaction_id bigint, ts timestamptz, amount numeric, features jsonb)
LANGUAGE sql STABLE AS $$
    WITH history AS (
        SELECT t.transaction_id, t.ts, t.amount, t.currency, t.merchant_id, txguard_day(t.ts) AS d,
               count(*)                   OVER before_it AS n,
               max(t.ts)                  OVER before_it AS prev_ts,
               min(t.ts)                  OVER before_it AS first_ts,
               count(*)                   OVER before_it_in_currency AS n_c,
               sum(t.amount)              OVER before_it_in_currency AS s,
               sum(t.amount * t.amount)   OVER before_it_in_currency AS s2,
               max(t.amount)              OVER before_it_in_currency AS mx,
               count(*)                   OVER last_minute AS c1m,
               coalesce(sum(t.amount)     OVER last_minute_in_currency, 0) AS s1m,
               count(*)                   OVER last_hour AS c1h,
               coalesce(sum(t.amount)     OVER last_hour_in_currency, 0) AS s1h,
               count(*)                   OVER last_day AS c24h,
               count(*)                   OVER last_day_in_currency AS c24h_c,
               coalesce(sum(t.amount)     OVER last_day_in_currency, 0) AS s24h
        FROM transactions t
        WHERE t.account_id = p_account_id
        WINDOW before_it   AS (ORDER BY t.ts RANGE BETWEEN UNBOUNDED PRECEDING AND interval '1 millisecond' PRECEDING),
               last_minute AS (ORDER BY t.ts RANGE BETWEEN interval '59.999 seconds' PRECEDING
                                                   AND interval '1 millisecond' PRECEDING),
               last_hour   AS (ORDER BY t.ts RANGE BETWEEN interval '59 minutes 59.999 seconds' PRECEDING
                                                   AND interval '1 millisecond' PRECEDING),
               last_day    AS (ORDER BY t.ts RANGE BETWEEN interval '23 hours 59 minutes 59.999 seconds' PRECEDING
                                                   AND interval '1 millisecond' PRECEDING),
               -- The same frames over the transactions in the transaction's own currency: amounts only.
               before_it_in_currency   AS (PARTITION BY t.currency ORDER BY t.ts
                                           RANGE BETWEEN UNBOUNDED PRECEDING AND interval '1 millisecond' PRECEDING),
               last_minute_in_currency AS (PARTITION BY t.currency ORDER BY t.ts
                                           RANGE BETWEEN interval '59.999 seconds' PRECEDING
                                                     AND interval '1 millisecond' PRECEDING),
               last_hour_in_currency   AS (PARTITION BY t.currency ORDER BY t.ts
                                           RANGE BETWEEN interval '59 minutes 59.999 seconds' PRECEDING
                                                     AND interval '1 millisecond' PRECEDING),
               last_day_in_currency    AS (PARTITION BY t.currency ORDER BY t.ts
                                           RANGE BETWEEN interval '23 hours 59 minutes 59.999 seconds' PRECEDING
                                                     AND interval '1 millisecond' PRECEDING)
    ),
    -- The label steps of the account's merchants, computed once from the definition (the view).
    steps AS MATERIALIZED (
        SELECT s.merchant_id, s.tx_day, s.known_day, s.frauds
        FROM merchant_label_steps s
        WHERE s.merchant_id IN (SELECT x.merchant_id FROM transactions x WHERE x.account_id = p_account_id)
    )
    SELECT h.transaction_id, h.ts, h.amount, jsonb_build_object(
        'amount', h.amount,
        'count', h.n,
        'mean_amount', CASE WHEN h.n_c > 0 THEN round(h.s::numeric(60, 30) / h.n_c, 6) END,
        'std_amount', CASE WHEN h.n_c > 0 THEN
            round(sqrt(((h.n_c * h.s2 - h.s * h.s)::numeric(80, 30)) / (h.n_c * h.n_c)), 6) END,
        'max_amount', h.mx,
        'seconds_since_previous', extract(epoch FROM h.ts - h.prev_ts),
        'account_age_seconds', coalesce(extract(epoch FROM h.ts - h.first_ts), 0),
        'is_first_transaction', CASE WHEN h.n = 0 THEN 1 ELSE 0 END,
        'count_1m', h.c1m, 'sum_1m', h.s1m,
        'count_1h', h.c1h, 'sum_1h', h.s1h,
        'count_24h', h.c24h, 'sum_24h', h.s24h,
        'mean_amount_24h', CASE WHEN h.c24h_c > 0 THEN round(h.s24h::numeric(60, 30) / h.c24h_c, 6) END,
        'merchant_count_1m', m.c1m, 'merchant_sum_1m', m.s1m,
        'merchant_count_1h', m.c1h, 'merchant_sum_1h', m.s1h,
        'merchant_count_24h', m.c24h, 'merchant_sum_24h', m.s24h
    ) || jsonb_build_object(
        'count_7d', w.c7d, 'sum_7d', w.s7d,
        'mean_amount_7d', CASE WHEN w.n7d > 0 THEN round(w.s7d::numeric(60, 30) / w.n7d, 6) END,
        'count_30d', w.c30d, 'sum_30d', w.s30d,
        'mean_amount_30d', CASE WHEN w.n30d > 0 THEN round(w.s30d::numeric(60, 30) / w.n30d, 6) END,
        'amount_to_mean_30d', CASE WHEN w.n30d > 0 AND w.s30d > 0 THEN
            round((h.amount * w.n30d)::numeric(60, 30) / w.s30d, 6) END,
        'merchant_used_before', CASE WHEN h.merchant_id IS NOT NULL THEN
            CASE WHEN EXISTS (SELECT 1 FROM transactions x
                              WHERE x.account_id = p_account_id AND x.merchant_id = h.merchant_id AND x.ts < h.ts)
                 THEN 1 ELSE 0 END END,
        'hour_of_day', extract(hour FROM h.ts AT TIME ZONE p_time_zone)::integer,
        'is_night', CASE WHEN extract(hour FROM h.ts AT TIME ZONE p_time_zone) <= 6 THEN 1 ELSE 0 END,
        'is_weekend', CASE WHEN extract(isodow FROM h.ts AT TIME ZONE p_time_zone) IN (6, 7) THEN 1 ELSE 0 END,
        'merchant_count_7d', md.c7d, 'merchant_count_30d', md.c30d,
        'merchant_risk_1d', r.r1d, 'merchant_risk_7d', r.r7d, 'merchant_risk_30d', r.r30d
    )
    FROM history h
    LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE x.ts > h.ts - interval '1 minute') AS c1m,
               coalesce(sum(x.amount) FILTER (WHERE x.ts > h.ts - interval '1 minute' AND x.currency = h.currency),
                        0) AS s1m,
               count(*) FILTER (WHERE x.ts > h.ts - interval '1 hour') AS c1h,
               coalesce(sum(x.amount) FILTER (WHERE x.ts > h.ts - interval '1 hour' AND x.currency = h.currency),
                        0) AS s1h,
               count(*) AS c24h,
               coalesce(sum(x.amount) FILTER (WHERE x.currency = h.currency), 0) AS s24h
        FROM transactions x
        WHERE x.merchant_id = h.merchant_id
          AND x.ts > h.ts - interval '24 hours' AND x.ts < h.ts
    ) m ON h.merchant_id IS NOT NULL
    -- Day-aligned: from the start of the UTC day 6 (29) days before t's day, up to t. Counts over every currency;
    -- sums, and the counts their means divide by (n7d, n30d), over t's currency.
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE x.ts >= txguard_day_start(h.d - 6)) AS c7d,
               count(*) FILTER (WHERE x.ts >= txguard_day_start(h.d - 6) AND x.currency = h.currency) AS n7d,
               coalesce(sum(x.amount) FILTER (WHERE x.ts >= txguard_day_start(h.d - 6) AND x.currency = h.currency),
                        0) AS s7d,
               count(*) AS c30d,
               count(*) FILTER (WHERE x.currency = h.currency) AS n30d,
               coalesce(sum(x.amount) FILTER (WHERE x.currency = h.currency), 0) AS s30d
        FROM transactions x
        WHERE x.account_id = p_account_id AND x.ts >= txguard_day_start(h.d - 29) AND x.ts < h.ts
    ) w
    LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE x.ts >= txguard_day_start(h.d - 6)) AS c7d, count(*) AS c30d
        FROM transactions x
        WHERE x.merchant_id = h.merchant_id AND x.ts >= txguard_day_start(h.d - 29) AND x.ts < h.ts
    ) md ON h.merchant_id IS NOT NULL
    -- Risk over window w: frauds known before t's day among the merchant's transactions of the days
    -- [d - delay - w, d - delay), divided by those transactions; 0 when there are none.
    LEFT JOIN LATERAL (
        SELECT max(v.risk) FILTER (WHERE v.width = 1) AS r1d,
               max(v.risk) FILTER (WHERE v.width = 7) AS r7d,
               max(v.risk) FILTER (WHERE v.width = 30) AS r30d
        FROM (
            SELECT ws.width,
                   CASE WHEN n.n > 0 THEN round(f.f::numeric(60, 30) / n.n, 6) ELSE 0 END AS risk
            FROM (VALUES (1), (7), (30)) AS ws(width)
            CROSS JOIN LATERAL (
                SELECT count(*) AS n FROM transactions x
                WHERE x.merchant_id = h.merchant_id
                  AND x.ts >= txguard_day_start(h.d - p_label_delay_days - ws.width)
                  AND x.ts < txguard_day_start(h.d - p_label_delay_days)) AS n
            CROSS JOIN LATERAL (
                SELECT coalesce(sum(s.frauds), 0) AS f FROM steps s
                WHERE s.merchant_id = h.merchant_id
                  AND s.tx_day >= h.d - p_label_delay_days - ws.width AND s.tx_day < h.d - p_label_delay_days
                  AND s.known_day < h.d) AS f
        ) v
    ) r ON h.merchant_id IS NOT NULL
$$;

