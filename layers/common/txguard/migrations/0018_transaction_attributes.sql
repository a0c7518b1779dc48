-- A transaction's optional attributes (txguard/attributes.py gives their canonical forms): how it was paid
-- (channel), where (country, ISO 3166-1 alpha-2), at what kind of merchant (merchant_category, four ISO 18245
-- digits), with which card and device (tokens, never a card number) from which IP address (canonical text), and
-- free string values (metadata). NULL when absent; ADD COLUMN without a default rewrites no row.
ALTER TABLE transactions
    ADD COLUMN channel text,
    ADD COLUMN country text,
    ADD COLUMN merchant_category text,
    ADD COLUMN card_id text,
    ADD COLUMN ip_address text,
    ADD COLUMN device_id text,
    ADD COLUMN metadata jsonb;


-- When each account first used each value of an attribute (attribute 'country' or 'device_id'), for new_country
-- and new_device: "used before t" is first_ts < t, whatever order the transactions arrived in (a back-dated one
-- lowers first_ts), as account_merchants does for merchants. Written by ingest in the transaction that stores.
CREATE TABLE account_values (
    account_id  bigint NOT NULL,
    attribute   text NOT NULL CHECK (attribute IN ('country', 'device_id')),
    value       text NOT NULL,
    first_ts    timestamptz NOT NULL,
    PRIMARY KEY (account_id, attribute, value)
);
GRANT SELECT, INSERT, UPDATE ON account_values TO txguard_service;

-- Rules compare text fields (txguard/rule_language.py): a comparison holds `text` (= and !=), `values` (in, not in)
-- or `list_name` (in list, not in list: the list's current items, unexpired at the time of the decision). The
-- features hold each text field's value (txguard_text_fields); a missing one makes every such comparison false.
-- STABLE now: a list's items are read.
CREATE OR REPLACE FUNCTION txguard_condition_holds(cond jsonb, features jsonb)
RETURNS boolean LANGUAGE plpgsql STABLE AS $$
DECLARE
    lhs   numeric;
    rhs   numeric;
    txt   text;
    found boolean;
    item  jsonb;
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
    ELSIF cond ? 'text' OR cond ? 'values' OR cond ? 'list_name' THEN
        txt := features ->> (cond ->> 'feature');
        IF txt IS NULL THEN RETURN false; END IF;
        IF cond ? 'list_name' THEN
            found := EXISTS (SELECT 1 FROM list_items i
                             WHERE i.list_name = cond ->> 'list_name' AND i.value = txt
                               AND (i.expires_at IS NULL OR i.expires_at > now()));
        ELSIF cond ? 'values' THEN
            found := (cond -> 'values') ? txt;
        ELSE
            found := txt = cond ->> 'text';
        END IF;
        RETURN CASE WHEN cond ->> 'op' IN ('=', 'in', 'in list') THEN found ELSE NOT found END;
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

-- The text fields rules compare, by name, as Transaction.text_value gives them (absent ones left out): the account
-- id in digits, the merchant id, the attributes, and each metadata value as "metadata.KEY".
CREATE FUNCTION txguard_text_fields(x transactions) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN jsonb_strip_nulls(jsonb_build_object(
               'account_id', x.account_id::text, 'merchant_id', x.merchant_id, 'channel', x.channel,
               'country', x.country, 'merchant_category', x.merchant_category, 'card_id', x.card_id,
               'ip_address', x.ip_address, 'device_id', x.device_id))
           || coalesce((SELECT jsonb_object_agg('metadata.' || e.key, e.value) FROM jsonb_each(x.metadata) e),
                       '{}'::jsonb);

-- detect_fraud as 0016 defines it, its rules also reading the transaction's text fields.
CREATE OR REPLACE FUNCTION detect_fraud(account_id bigint, rule_set_version integer DEFAULT NULL)
RETURNS TABLE (transaction_id bigint, ts timestamptz, amount numeric, fraud boolean, score numeric,
               rule_ids text[], shadow_rule_ids text[], rules_version integer, model_version integer,
               model_score double precision)
LANGUAGE sql STABLE
SET extra_float_digits = 1
AS $$
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
        JOIN transactions x ON x.transaction_id = f.transaction_id
        CROSS JOIN LATERAL (
            SELECT CASE WHEN x.model_version IS NOT NULL AND x.model_score IS NOT NULL
                        THEN f.features || jsonb_build_object('model_score', x.model_score::text::numeric)
                        ELSE f.features END || txguard_text_fields(x) AS features) m
        CROSS JOIN LATERAL jsonb_array_elements(rule_set.document -> 'rules') WITH ORDINALITY AS r(rule, position)
        WHERE (r.rule ->> 'enabled')::boolean
          AND txguard_condition_holds(r.rule -> 'condition', m.features)
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
    ),
    combined AS (
        SELECT t.transaction_id, t.ts, t.amount, coalesce(s.score, 0) AS rules_score,
               s.rule_ids, s.shadow_rule_ids,
               CASE WHEN t.model_version IS NOT NULL THEN t.model_version END AS model_version,
               CASE WHEN t.model_version IS NOT NULL THEN t.model_score END AS model_score,
               CASE WHEN t.model_version IS NOT NULL THEN t.model_threshold END AS model_threshold
        FROM transactions t
        LEFT JOIN scored s ON s.transaction_id = t.transaction_id
        WHERE t.account_id = detect_fraud.account_id
    )
    SELECT c.transaction_id, c.ts, c.amount,
           c.rules_score >= (rule_set.document ->> 'threshold')::numeric
               OR coalesce(c.model_score >= c.model_threshold, false) AS fraud,
           round(1 - (1 - coalesce(c.model_score::text::numeric, 0)) * (1 - c.rules_score), 4) AS score,
           coalesce(c.rule_ids, '{}'), coalesce(c.shadow_rule_ids, '{}'),
           rule_set.version, c.model_version, c.model_score
    FROM combined c
    CROSS JOIN rule_set
    ORDER BY c.ts, c.transaction_id
$$;

-- transaction_features as 0012 defines it, plus the attribute features (txguard/features.py's docstring):
-- distinct values in (t - 24 h, t) and the transaction's own; first use of a country or device by the account.
ALTER FUNCTION transaction_features(bigint, text, integer) RENAME TO txguard_amount_features;

CREATE FUNCTION transaction_features(
    p_account_id bigint, p_time_zone text DEFAULT 'UTC', p_label_delay_days integer DEFAULT 7
)
RETURNS TABLE (transaction_id bigint, ts timestamptz, amount numeric, features jsonb)
LANGUAGE sql STABLE AS $$
    SELECT h.transaction_id, h.ts, h.amount, h.features || jsonb_build_object(
        'distinct_countries_24h', d.countries, 'distinct_devices_24h', d.devices, 'distinct_cards_24h', d.cards,
        'new_country', CASE WHEN t.country IS NOT NULL THEN
            CASE WHEN EXISTS (SELECT 1 FROM transactions x
                              WHERE x.account_id = p_account_id AND x.country = t.country AND x.ts < t.ts)
                 THEN 0 ELSE 1 END END,
        'new_device', CASE WHEN t.device_id IS NOT NULL THEN
            CASE WHEN EXISTS (SELECT 1 FROM transactions x
                              WHERE x.account_id = p_account_id AND x.device_id = t.device_id AND x.ts < t.ts)
                 THEN 0 ELSE 1 END END)
    FROM txguard_amount_features(p_account_id, p_time_zone, p_label_delay_days) h
    JOIN transactions t ON t.transaction_id = h.transaction_id
    CROSS JOIN LATERAL (
        SELECT count(DISTINCT w.country) AS countries, count(DISTINCT w.device_id) AS devices,
               count(DISTINCT w.card_id) AS cards
        FROM (SELECT x.country, x.device_id, x.card_id FROM transactions x
              WHERE x.account_id = p_account_id AND x.ts > t.ts - interval '24 hours' AND x.ts < t.ts
              UNION ALL
              SELECT t.country, t.device_id, t.card_id) AS w
    ) d
$$;
