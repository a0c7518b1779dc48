-- Labels: what became known about a transaction after it was decided (a chargeback, an analyst's review,
-- a customer's report, the generator's truth). Append-only: a later label supersedes an earlier one for
-- evaluation and features, and the history is kept. A label may arrive before its transaction is stored
-- (no foreign key); it applies when the transaction arrives.
--
-- The label in force for a transaction at a time T is the one with the latest (labelled_at, label_id) among
-- its labels with labelled_at < T; "now" for evaluation. labelled_at is when the truth became known (never
-- after received_at, which is when txguard received it): features use labelled_at, so that a replay of
-- history sees labels exactly when they became known in event time.
CREATE TABLE labels (
    label_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- order of receipt
    transaction_id  bigint NOT NULL,
    fraud           boolean NOT NULL,
    source          text NOT NULL CHECK (char_length(source) BETWEEN 1 AND 100),
    labelled_at     timestamptz NOT NULL CHECK (labelled_at = date_trunc('milliseconds', labelled_at)),
    reason          text CHECK (char_length(reason) BETWEEN 1 AND 200),
    received_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The same label sent twice is stored once.
CREATE UNIQUE INDEX labels_identity ON labels (transaction_id, labelled_at, fraud, source, coalesce(reason, ''));
-- GET /labels by account: through the transactions' ids.
CREATE INDEX labels_transaction ON labels (transaction_id, labelled_at, label_id);

-- Migration 0003's fraud_labels (the generator's truth) folds into this table: each row becomes a label of
-- source 'generator', fraud unless its pattern is 'genuine', the pattern as reason, known and received when it
-- was written. Its run_id is not kept: a generated transaction's run is its id >> 23.
INSERT INTO labels (transaction_id, fraud, source, labelled_at, reason, received_at)
SELECT transaction_id, pattern <> 'genuine', 'generator', date_trunc('milliseconds', labelled_at),
       CASE WHEN pattern <> 'genuine' THEN pattern END, labelled_at
FROM fraud_labels
ORDER BY labelled_at, transaction_id;

DROP TABLE fraud_labels;

-- UTC day number (days since 1970-01-01) of a timestamp, as account_daily counts days.
CREATE FUNCTION txguard_day(ts timestamptz) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN div(txguard_ts_to_ms(ts), 86400000)::integer;

-- Each stored transaction's fraud label as it changed from one UTC day to the next: +1 on the day (of
-- labelled_at) from whose end it stands labelled fraud, -1 on the day from whose end it no longer does.
-- Within a day the day's last label (by labelled_at, label_id) counts. This view is the definition;
-- merchant_label_daily holds the same sums, maintained as labels and transactions arrive.
CREATE VIEW merchant_label_steps AS
WITH per_day AS (
    SELECT DISTINCT ON (l.transaction_id, txguard_day(l.labelled_at))
           l.transaction_id, txguard_day(l.labelled_at) AS known_day, l.fraud
    FROM labels l
    ORDER BY l.transaction_id, txguard_day(l.labelled_at), l.labelled_at DESC, l.label_id DESC
),
steps AS (
    SELECT p.transaction_id, p.known_day,
           p.fraud::int - coalesce(lag(p.fraud::int) OVER (PARTITION BY p.transaction_id ORDER BY p.known_day), 0)
               AS frauds
    FROM per_day p
)
SELECT t.merchant_id, txguard_day(t.ts) AS tx_day, s.known_day, sum(s.frauds)::integer AS frauds
FROM steps s
JOIN transactions t ON t.transaction_id = s.transaction_id
WHERE t.merchant_id IS NOT NULL AND s.frauds <> 0
GROUP BY 1, 2, 3
HAVING sum(s.frauds) <> 0;

-- The labelled frauds among a merchant's transactions, by the day of the transaction and the day the label
-- became known, as signed changes. The frauds among a merchant's transactions of days [a, b) known before
-- day k are sum(frauds) over tx_day in [a, b) and known_day < k: a few rows, never a scan of labels.
CREATE TABLE merchant_label_daily (
    merchant_id  text NOT NULL,
    tx_day       integer NOT NULL,
    known_day    integer NOT NULL,
    frauds       integer NOT NULL,
    PRIMARY KEY (merchant_id, tx_day, known_day)
);

INSERT INTO merchant_label_daily (merchant_id, tx_day, known_day, frauds)
SELECT merchant_id, tx_day, known_day, frauds FROM merchant_label_steps;
