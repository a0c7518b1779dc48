-- What a decision records about the models beside the rules (txguard/models/serving.py): the detector version
-- that decided (detector_versions: a rule set, a champion model, shadow models), the champion's version and
-- probability (0-1, full precision, as the model computed it) and the threshold from its artifact that the
-- probability was judged against, why the champion was not used when it was not (the rules then decided alone),
-- and each shadow model's probability ({"<version>": score}), which never decides.
-- NULL in rows stored before models (and in ADD COLUMN without a default no row is rewritten).
ALTER TABLE transactions
    ADD COLUMN detector_version integer,
    ADD COLUMN model_version integer,
    ADD COLUMN model_score double precision,
    ADD COLUMN model_threshold double precision,
    ADD COLUMN model_fallback text,
    ADD COLUMN shadow_scores jsonb;

-- detect_fraud with models: SQL cannot run a tree model, so it takes each decision's stored champion score
-- (model_score, with the threshold it was judged against) and combines it with the rules exactly as
-- txguard/models/serving.py does:
--   r = the rules' score (four places), p = model_score (0 when no champion scored the decision);
--   score = round(1 - (1 - p)(1 - r), 4); fraud = r >= the rule set's threshold OR p >= model_threshold;
--   rules read `model_score` as a feature (missing when no champion scored), as the shortest decimal that gives
--   back the stored double: float8's text with extra_float_digits > 0, as Python's repr writes it.
DROP FUNCTION detect_fraud(bigint, integer);

CREATE FUNCTION detect_fraud(account_id bigint, rule_set_version integer DEFAULT NULL)
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
                        ELSE f.features END AS features) m
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
