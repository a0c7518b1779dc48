-- Graded outcomes and rule snoozes (txguard/rule_engine.py: the precedence).
--
-- Each decision's outcome: allow, review or block; `fraud` means exactly block. Ingest writes it with every
-- decision; NULL (rows stored before outcomes, or written without one) means what `fraud` says: block or allow.
-- So no row is rewritten or updated here, however large the table.
ALTER TABLE transactions
    ADD COLUMN outcome text CONSTRAINT transactions_outcome CHECK (outcome IN ('allow', 'review', 'block')),
    ADD CONSTRAINT transactions_fraud_is_block CHECK (outcome IS NULL OR fraud = (outcome = 'block'));

-- GET /is_fraud/{account}?outcome=review: an account's reviewed transactions, newest first.
CREATE INDEX transactions_account_review ON transactions (account_id, ts DESC, transaction_id DESC)
    WHERE outcome = 'review';
-- The review queue: transactions sent to review by score, highest first (a small share of the rows); the blocked
-- ones that follow them are read through transactions_flagged_score.
CREATE INDEX transactions_review_score ON transactions (score DESC, transaction_id) WHERE outcome = 'review';

-- A rule snoozed for one entity (a value of a list kind: account 42, card tok_1, country FR, ...) until a time:
-- while `until` is ahead of the decision's wall-clock time, the rule does not fire for transactions of that
-- entity. One row per (rule, kind, value): snoozing again replaces it, lifting deletes it; rule_snooze_changes
-- keeps every change.
CREATE TABLE rule_snoozes (
    rule_id     text NOT NULL CHECK (rule_id ~ '^[a-z][a-z0-9_]{0,62}$'),
    kind        text NOT NULL CHECK (kind IN ('account', 'merchant', 'card', 'country', 'ip', 'device',
                                              'merchant_category')),
    value       text NOT NULL CHECK (char_length(value) BETWEEN 1 AND 64),
    until       timestamptz NOT NULL,
    note        text CHECK (char_length(note) <= 500),
    created_by  text NOT NULL CHECK (char_length(created_by) BETWEEN 1 AND 64),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (rule_id, kind, value)
);
-- Ingest looks up the snoozes of a batch's entities: (kind, value) pairs, one indexed probe each.
CREATE INDEX rule_snoozes_entity ON rule_snoozes (kind, value);

CREATE TABLE rule_snooze_changes (
    change_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- order of change
    change      text NOT NULL CHECK (change IN ('snoozed', 'changed', 'lifted')),
    rule_id     text NOT NULL,
    kind        text NOT NULL,
    value       text NOT NULL,
    until       timestamptz NOT NULL,
    note        text,
    changed_by  text NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX rule_snooze_changes_rule ON rule_snooze_changes (rule_id, change_id);

-- The transaction field a list kind's values match (txguard/attributes.py LIST_KINDS): its key in
-- txguard_text_fields(row), which holds each field as the canonical text ingest stored (an account id as digits).
CREATE FUNCTION txguard_list_field(kind text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE kind
        WHEN 'account' THEN 'account_id' WHEN 'merchant' THEN 'merchant_id' WHEN 'card' THEN 'card_id'
        WHEN 'country' THEN 'country' WHEN 'ip' THEN 'ip_address' WHEN 'device' THEN 'device_id'
        WHEN 'merchant_category' THEN 'merchant_category' END
$$;

-- The allow and block lists that hold one of a transaction's values (`item`: txguard_text_fields of the transaction), by name.
-- An item applies while it has no expiry or its expiry is ahead (txguard/outcomes.py).
CREATE FUNCTION txguard_listed(item jsonb, OUT allow_lists text[], OUT block_lists text[])
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(l.name ORDER BY l.name) FILTER (WHERE l.action = 'allow'), '{}'),
           coalesce(array_agg(l.name ORDER BY l.name) FILTER (WHERE l.action = 'block'), '{}')
    FROM lists l
    WHERE l.action IS NOT NULL
      AND EXISTS (SELECT 1 FROM list_items i
                  WHERE i.list_name = l.name AND i.value = item ->> txguard_list_field(l.kind)
                    AND (i.expires_at IS NULL OR i.expires_at > now()))
$$;

-- detect_fraud with outcomes: as 0018 defines it (rules reading numbers and the transaction's text fields), plus
-- each rule's action, the review thresholds, snoozes and allow/block
-- lists, in the precedence of txguard/rule_engine.py. Lists and snoozes are read as they stand now (an item or
-- a snooze applies while it has not expired), as ingest reads them when it decides.
DROP FUNCTION detect_fraud(bigint, integer);

CREATE FUNCTION detect_fraud(account_id bigint, rule_set_version integer DEFAULT NULL)
RETURNS TABLE (transaction_id bigint, ts timestamptz, amount numeric, fraud boolean, score numeric,
               rule_ids text[], shadow_rule_ids text[], rules_version integer, model_version integer,
               model_score double precision, outcome text, snoozed_rule_ids text[], list_names text[])
LANGUAGE sql STABLE
SET extra_float_digits = 1
AS $$
    WITH rule_set AS (
        SELECT rs.version, rs.document
        FROM rule_sets rs
        WHERE rs.version = coalesce(detect_fraud.rule_set_version, (SELECT max(version) FROM rule_sets))
    ),
    holding AS (
        SELECT f.transaction_id, r.rule ->> 'id' AS rule_id, r.rule ->> 'mode' AS mode,
               coalesce(r.rule ->> 'action', 'score') AS action,
               coalesce((r.rule ->> 'score')::numeric, 0) AS weight,
               EXISTS (SELECT 1 FROM rule_snoozes s
                       WHERE s.rule_id = r.rule ->> 'id' AND s.until > now()
                         AND s.value = txguard_text_fields(x) ->> txguard_list_field(s.kind)) AS snoozed
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
        SELECT h.transaction_id,
               round(1 - coalesce(txguard_product(1 - h.weight)
                                  FILTER (WHERE h.mode = 'active' AND h.action = 'score' AND NOT h.snoozed), 1), 4)
                   AS score,
               coalesce(array_agg(h.rule_id ORDER BY h.rule_id) FILTER (WHERE h.mode = 'active' AND NOT h.snoozed),
                        '{}') AS rule_ids,
               coalesce(array_agg(h.rule_id ORDER BY h.rule_id) FILTER (WHERE h.mode = 'shadow' AND NOT h.snoozed),
                        '{}') AS shadow_rule_ids,
               coalesce(array_agg(h.rule_id ORDER BY h.rule_id) FILTER (WHERE h.snoozed), '{}') AS snoozed_rule_ids,
               coalesce(array_agg(DISTINCT h.action) FILTER (WHERE h.mode = 'active' AND NOT h.snoozed), '{}')
                   AS actions
        FROM holding h
        GROUP BY h.transaction_id
    ),
    combined AS (
        SELECT t.transaction_id, t.ts, t.amount, coalesce(s.score, 0) AS rules_score,
               s.rule_ids, s.shadow_rule_ids, s.snoozed_rule_ids, coalesce(s.actions, '{}') AS actions,
               CASE WHEN t.model_version IS NOT NULL THEN t.model_version END AS model_version,
               CASE WHEN t.model_version IS NOT NULL THEN t.model_score END AS model_score,
               CASE WHEN t.model_version IS NOT NULL THEN t.model_threshold END AS model_threshold,
               listed.allow_lists, listed.block_lists
        FROM transactions t
        LEFT JOIN scored s ON s.transaction_id = t.transaction_id
        CROSS JOIN LATERAL txguard_listed(txguard_text_fields(t)) listed
        WHERE t.account_id = detect_fraud.account_id
    ),
    judged AS (
        SELECT c.*, rule_set.version AS rules_version,
               CASE
                   WHEN cardinality(c.allow_lists) > 0 THEN 'allow'
                   WHEN cardinality(c.block_lists) > 0 THEN 'block'
                   WHEN 'allow' = ANY(c.actions) THEN 'allow'
                   WHEN 'block' = ANY(c.actions)
                        OR c.rules_score >= (rule_set.document ->> 'threshold')::numeric
                        OR coalesce(c.model_score >= coalesce((rule_set.document ->> 'model_block_threshold')::float8,
                                                              c.model_threshold), false)
                       THEN 'block'
                   WHEN 'review' = ANY(c.actions)
                        OR coalesce(c.rules_score >= (rule_set.document ->> 'review_threshold')::numeric, false)
                        OR coalesce(c.model_score >= (rule_set.document ->> 'model_review_threshold')::float8, false)
                       THEN 'review'
                   ELSE 'allow'
               END AS outcome
        FROM combined c
        CROSS JOIN rule_set
    )
    SELECT j.transaction_id, j.ts, j.amount, j.outcome = 'block' AS fraud,
           round(1 - (1 - coalesce(j.model_score::text::numeric, 0)) * (1 - j.rules_score), 4) AS score,
           coalesce(j.rule_ids, '{}'), coalesce(j.shadow_rule_ids, '{}'),
           j.rules_version, j.model_version, j.model_score, j.outcome, coalesce(j.snoozed_rule_ids, '{}'),
           j.allow_lists || j.block_lists
    FROM judged j
    ORDER BY j.ts, j.transaction_id
$$;
