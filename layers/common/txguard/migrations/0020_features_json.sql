-- The features each decision was taken on, stored as json rather than jsonb.
--
-- Ingest writes them with every transaction (about 30 named numbers each) and only a few paths read them back: a
-- decision's page and API, training and backtests. jsonb builds its binary form on every write, which cost the
-- database more per stored transaction than everything else COPY does for the row (about 15 of ~37 µs of backend
-- CPU per row, measured on a 5,000-row batch); json is only checked to be valid and kept as written. Readers that
-- look inside (training, backtests) cast to jsonb once per row they read.
--
-- Changing the column's type rewrites the table and rebuilds its indexes once (an ACCESS EXCLUSIVE lock for that
-- long): run it in a quiet hour on a large table. txguard_text_fields takes the table's row type, so it is dropped
-- for the change and created again exactly as 0018 defines it (detect_fraud calls it by name).
DROP FUNCTION txguard_text_fields(transactions);

ALTER TABLE transactions ALTER COLUMN features TYPE json USING features::json;

CREATE FUNCTION txguard_text_fields(x transactions) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN jsonb_strip_nulls(jsonb_build_object(
               'account_id', x.account_id::text, 'merchant_id', x.merchant_id, 'channel', x.channel,
               'country', x.country, 'merchant_category', x.merchant_category, 'card_id', x.card_id,
               'ip_address', x.ip_address, 'device_id', x.device_id))
           || coalesce((SELECT jsonb_object_agg('metadata.' || e.key, e.value) FROM jsonb_each(x.metadata) e),
                       '{}'::jsonb);
