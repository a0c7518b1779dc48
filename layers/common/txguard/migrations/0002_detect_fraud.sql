-- Detection inside PostgreSQL: the same features and the same rules as the Python engine
-- (txguard/features.py, txguard/rule_engine.py), evaluated point-in-time over an account's stored history.
-- "Previous" means a strictly earlier timestamp; windows are (ts - width, ts), open at both ends.

CREATE AGGREGATE txguard_product(numeric) (SFUNC = numeric_mul, STYPE = numeric, INITCOND = '1');

-- Features of every transaction of one account, each judged only on what came before it.
CREATE FUNCTION transaction_features(p_account_id bigint)
RETURNS TABLE (transaction_id bigint, ts timestamptz, amount numeric, features jsonb)
LANGUAGE sql STABLE AS $$
    WITH history AS (
        SELECT t.transaction_id, t.ts, t.amount, t.merchant_id,
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
        'merchant_count_1m', m.c1m, 'merchant_sum_1m', m.s1m,
        'merchant_count_1h', m.c1h, 'merchant_sum_1h', m.s1h,
        'merchant_count_24h', m.c24h, 'merchant_sum_24h', m.s24h
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
$$;

-- Does a rule condition (the parsed form stored in rule_sets.document) hold for these features?
-- A comparison with a missing feature (no previous transaction, no merchant) does not hold.
CREATE FUNCTION txguard_condition_holds(cond jsonb, features jsonb)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    lhs  numeric;
    rhs  numeric;
    item jsonb;
BEGIN
    IF cond ? 'all' THEN
        FOR item IN SELECT jsonb_array_elements(cond -> 'all') LOOP
            IF NOT txguard_condition_holds(item, features) THEN RETURN false; END IF;
        END LOOP;
        RETURN true;
    ELSIF cond ? 'any' THEN
        FOR item IN SELECT jsonb_array_elements(cond -> 'any') LOOP
            IF txguard_condition_holds(item, features) THEN RETURN true; END IF;
        END LOOP;
        RETURN false;
    END IF;
    lhs := (features ->> (cond ->> 'feature'))::numeric;
    IF cond ? 'other' THEN
        rhs := (cond ->> 'factor')::numeric * (features ->> (cond ->> 'other'))::numeric;
    ELSE
        rhs := (cond ->> 'value')::numeric;
    END IF;
    IF lhs IS NULL OR rhs IS NULL THEN RETURN false; END IF;
    RETURN CASE cond ->> 'op'
        WHEN '<'  THEN lhs < rhs
        WHEN '<=' THEN lhs <= rhs
        WHEN '>'  THEN lhs > rhs
        WHEN '>=' THEN lhs >= rhs
        WHEN '='  THEN lhs = rhs
        WHEN '!=' THEN lhs <> rhs
    END;
END
$$;

-- Every transaction of the account judged with a rule set (the newest when none is given):
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
        FROM transaction_features(detect_fraud.account_id) f
        CROSS JOIN rule_set
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
