-- History features: day-aligned 7- and 30-day windows, whether an account used a merchant before, local time
-- of day, merchant counts over days and merchant risk from labels; and the feature values of each decision.
--
-- The per-day tables below are maintained in the database transaction that stores transactions (ingest.py),
-- so that the features cost a few rows per transaction whatever the history. transaction_features and
-- detect_fraud are redefined here as the plain reference: windows and joins over the stored transactions
-- and the labels view, the same definitions as txguard/features.py.

-- Each merchant's transactions per UTC day (all accounts, all currencies).
CREATE TABLE merchant_daily (
    merchant_id  text NOT NULL,
    day          integer NOT NULL,  -- txguard_day(ts)
    tx_count     bigint NOT NULL,
    PRIMARY KEY (merchant_id, day)
);

INSERT INTO merchant_daily (merchant_id, day, tx_count)
SELECT merchant_id, txguard_day(ts), count(*)
FROM transactions
WHERE merchant_id IS NOT NULL
GROUP BY 1, 2;

-- When each account first transacted at each merchant: "used before t" is first_ts < t, whatever order the
-- transactions arrived in (a back-dated one lowers first_ts).
CREATE TABLE account_merchants (
    account_id   bigint NOT NULL,
    merchant_id  text NOT NULL,
    first_ts     timestamptz NOT NULL,
    PRIMARY KEY (account_id, merchant_id)
);

INSERT INTO account_merchants (account_id, merchant_id, first_ts)
SELECT account_id, merchant_id, min(ts)
FROM transactions
WHERE merchant_id IS NOT NULL
GROUP BY 1, 2;

-- The features a decision was taken on, by name (only those its detector reads); NULL for rows stored before.
ALTER TABLE transactions ADD COLUMN features jsonb;

GRANT SELECT, INSERT, UPDATE ON merchant_daily TO txguard_service;
GRANT SELECT, INSERT, UPDATE ON account_merchants TO txguard_service;

-- The start (as a timestamptz) of UTC day number `day`.
CREATE FUNCTION txguard_day_start(day integer) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN txguard_ms_to_ts(day::bigint * 86400000);

DROP FUNCTION detect_fraud(bigint, integer);
DROP FUNCTION transaction_features(bigint);

-- Features of every transaction of one account, each judged only on what came before it; local-time features in
-- p_time_zone, merchant risk with a delay of p_label_delay_days.
CREATE FUNCTION transaction_features(
    p_account_id bigint, p_time_zone text DEFAULT 'UTC', p_label_delay_days integer DEFAULT 7
)
RETURNS TABLE (transaction_id bigint, ts timestamptz, amount numeric, features jsonb)
LANGUAGE sql STABLE AS $$
    WITH history AS (
        SELECT t.transaction_id, t.ts, t.amount, t.merchant_id, txguard_day(t.ts) AS d,
               count(*)                   OVER before_it AS n,
               sum(t.amount)              OVER before_it AS s,
               sum(t.amount * t.amount)   OVER before_it AS s2,
               max(t.amount)              OVER before_it AS mx,
               max(t.ts)                  OVER before_it AS prev_ts,
               min(t.ts)                  OVER before_it AS first_ts,
               count(*)                   OVER last_minute AS c1m,
               coalesce(sum(t.amount)     OVER last_minute, 0) AS s1m,
               count(*)                   OVER last_hour AS c1h,
               coalesce(sum(t.amount)     OVER last_hour, 0) AS s1h,
               count(*)                   OVER last_day AS c24h,
               coalesce(sum(t.amount)     OVER last_day, 0) AS s24h
        FROM transactions t
        WHERE t.account_id = p_account_id
        WINDOW before_it   AS (ORDER BY t.ts RANGE BETWEEN UNBOUNDED PRECEDING AND interval '1 millisecond' PRECEDING),
               last_minute AS (ORDER BY t.ts RANGE BETWEEN interval '59.999 seconds' PRECEDING
                                                   AND interval '1 millisecond' PRECEDING),
               last_hour   AS (ORDER BY t.ts RANGE BETWEEN interval '59 minutes 59.999 seconds' PRECEDING
                                                   AND interval '1 millisecond' PRECEDING),
               last_day    AS (ORDER BY t.ts RANGE BETWEEN interval '23 hours 59 minutes 59.999 seconds' PRECEDING
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
        'mean_amount', CASE WHEN h.n > 0 THEN round(h.s::numeric(60, 30) / h.n, 6) END,
        'std_amount', CASE WHEN h.n > 0 THEN
            round(sqrt(((h.n * h.s2 - h.s * h.s)::numeric(80, 30)) / (h.n * h.n)), 6) END,
        'max_amount', h.mx,
        'seconds_since_previous', extract(epoch FROM h.ts - h.prev_ts),
        'account_age_seconds', coalesce(extract(epoch FROM h.ts - h.first_ts), 0),
        'is_first_transaction', CASE WHEN h.n = 0 THEN 1 ELSE 0 END,
        'count_1m', h.c1m, 'sum_1m', h.s1m,
        'count_1h', h.c1h, 'sum_1h', h.s1h,
        'count_24h', h.c24h, 'sum_24h', h.s24h,
        'mean_amount_24h', CASE WHEN h.c24h > 0 THEN round(h.s24h::numeric(60, 30) / h.c24h, 6) END,
        'merchant_count_1m', m.c1m, 'merchant_sum_1m', m.s1m,
        'merchant_count_1h', m.c1h, 'merchant_sum_1h', m.s1h,
        'merchant_count_24h', m.c24h, 'merchant_sum_24h', m.s24h
    ) || jsonb_build_object(
        'count_7d', w.c7d, 'sum_7d', w.s7d,
        'mean_amount_7d', CASE WHEN w.c7d > 0 THEN round(w.s7d::numeric(60, 30) / w.c7d, 6) END,
        'count_30d', w.c30d, 'sum_30d', w.s30d,
        'mean_amount_30d', CASE WHEN w.c30d > 0 THEN round(w.s30d::numeric(60, 30) / w.c30d, 6) END,
        'amount_to_mean_30d', CASE WHEN w.c30d > 0 AND w.s30d > 0 THEN
            round((h.amount * w.c30d)::numeric(60, 30) / w.s30d, 6) END,
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
               coalesce(sum(x.amount) FILTER (WHERE x.ts > h.ts - interval '1 minute'), 0) AS s1m,
               count(*) FILTER (WHERE x.ts > h.ts - interval '1 hour') AS c1h,
               coalesce(sum(x.amount) FILTER (WHERE x.ts > h.ts - interval '1 hour'), 0) AS s1h,
               count(*) AS c24h,
               coalesce(sum(x.amount), 0) AS s24h
        FROM transactions x
        WHERE x.merchant_id = h.merchant_id
          AND x.ts > h.ts - interval '24 hours' AND x.ts < h.ts
    ) m ON h.merchant_id IS NOT NULL
    -- Day-aligned: from the start of the UTC day 6 (29) days before t's day, up to t.
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE x.ts >= txguard_day_start(h.d - 6)) AS c7d,
               coalesce(sum(x.amount) FILTER (WHERE x.ts >= txguard_day_start(h.d - 6)), 0) AS s7d,
               count(*) AS c30d,
               coalesce(sum(x.amount), 0) AS s30d
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

-- Every transaction of the account judged with a rule set (the newest when none is given), its features computed
-- with the rule set's `features` block (time zone, label delay; the defaults when it has none):
-- score = 1 - product(1 - weight) over the active rules that fire, fraud when score >= threshold.
CREATE FUNCTION detect_fraud(account_id bigint, rule_set_version integer DEFAULT NULL)
RETURNS TABLE (transaction_id bigint, ts timestamptz, amount numeric, fraud boolean, score numeric,
               rule_ids text[], shadow_rule_ids text[], rules_version integer)
LANGUAGE sql STABLE AS $$
    WITH rule_set AS (
        SELECT rs.version, rs.document
        FROM rule_sets rs
        WHERE rs.version = coalesce(detect_fraud.rule_set_version, (SELECT max(version) FROM rule_sets))
    ),
    fired AS (
        SELECT f.transaction_id, r.rule ->> 'id' AS rule_id, r.rule ->> 'mode' AS mode,
               (r.rule ->> 'score')::numeric AS weight
        FROM rule_set
        CROSS JOIN LATERAL transaction_features(
            detect_fraud.account_id,
            coalesce(rule_set.document -> 'features' ->> 'time_zone', 'UTC'),
            coalesce((rule_set.document -> 'features' ->> 'label_delay_days')::integer, 7)) f
        CROSS JOIN LATERAL jsonb_array_elements(rule_set.document -> 'rules') WITH ORDINALITY AS r(rule, position)
        WHERE (r.rule ->> 'enabled')::boolean
          AND txguard_condition_holds(r.rule -> 'condition', f.features)
    ),
    scored AS (
        SELECT fired.transaction_id,
               round(1 - coalesce(txguard_product(1 - fired.weight) FILTER (WHERE fired.mode = 'active'), 1), 4)
                   AS score,
               coalesce(array_agg(fired.rule_id ORDER BY fired.rule_id) FILTER (WHERE fired.mode = 'active'),
                        '{}') AS rule_ids,
               coalesce(array_agg(fired.rule_id ORDER BY fired.rule_id) FILTER (WHERE fired.mode = 'shadow'),
                        '{}') AS shadow_rule_ids
        FROM fired
        GROUP BY fired.transaction_id
    )
    SELECT t.transaction_id, t.ts, t.amount,
           coalesce(s.score, 0) >= (rule_set.document ->> 'threshold')::numeric AS fraud,
           coalesce(s.score, 0) AS score,
           coalesce(s.rule_ids, '{}'), coalesce(s.shadow_rule_ids, '{}'),
           rule_set.version
    FROM transactions t
    CROSS JOIN rule_set
    LEFT JOIN scored s ON s.transaction_id = t.transaction_id
    WHERE t.account_id = detect_fraud.account_id
    ORDER BY t.ts, t.transaction_id
$$;
