-- The analyst console: rollups its pages read instead of scanning transactions, and the claims that keep
-- two analysts off the same review item.

-- Which rows the rollups have already counted: transactions stored before refreshed_to (stored_at). A refresh
-- reads only the rows stored since, through this index. (A BRIN index would cost ingest less, but the block
-- ranges a bulk load leaves unsummarised until autovacuum reaches them are scanned whole by every refresh.)
CREATE INDEX transactions_stored_at ON transactions (stored_at);

-- slice_ms: how much stored_at time one refresh step covers, adapted to what fits in a step's time budget.
CREATE TABLE console_rollup_state (
    id            smallint PRIMARY KEY CHECK (id = 1),
    refreshed_to  timestamptz,  -- NULL: nothing counted yet
    slice_ms      bigint NOT NULL CHECK (slice_ms > 0)
);

-- Per hour of the transactions' timestamps (UTC), currency and amount band: volume, amount and flags.
-- amount_band is width_bucket(amount, {0.01, 10, 25, 50, 100, 250, 500, 1000, 5000}): 0 for a zero amount.
CREATE TABLE console_hourly (
    hour          timestamptz NOT NULL,
    currency      char(3) NOT NULL,
    amount_band   smallint NOT NULL,
    transactions  bigint NOT NULL,
    amount        numeric NOT NULL,
    flagged       bigint NOT NULL,
    PRIMARY KEY (hour, currency, amount_band)
);

-- Per UTC day of the transactions' timestamps and rule: how often the rule fired (active and shadow alike).
CREATE TABLE console_rule_daily (
    day      integer NOT NULL,  -- txguard_day(ts)
    rule_id  text NOT NULL,
    mode     text NOT NULL,
    hits     bigint NOT NULL,
    PRIMARY KEY (day, rule_id, mode)
);

-- Labels in force of the counted transactions (latest labelled_at, then label_id, among the labels received
-- before refreshed_to), per hour of the transaction, amount band and whether it was flagged; and per UTC day
-- of the transaction and rule that fired on it. A refresh subtracts what each transaction with a new label
-- (or newly stored with labels) counted before and adds what it counts now.
CREATE INDEX labels_received_at ON labels (received_at);

CREATE TABLE console_label_hourly (
    hour          timestamptz NOT NULL,
    amount_band   smallint NOT NULL,
    flagged       boolean NOT NULL,
    labelled      bigint NOT NULL,
    fraud         bigint NOT NULL,
    PRIMARY KEY (hour, amount_band, flagged)
);

CREATE TABLE console_rule_label_daily (
    day       integer NOT NULL,
    rule_id   text NOT NULL,
    labelled  bigint NOT NULL,
    fraud     bigint NOT NULL,
    PRIMARY KEY (day, rule_id)
);

-- The review queue: flagged transactions by score, highest first (a small share of the rows).
CREATE INDEX transactions_flagged_score ON transactions (score DESC, transaction_id) WHERE fraud;

-- An analyst's claim on a review item; a claim past expires_at is free to take. The primary key is what keeps
-- two analysts off one item: a claim is an INSERT ... ON CONFLICT that takes over only an expired claim.
CREATE TABLE review_claims (
    transaction_id  bigint PRIMARY KEY,
    analyst         text NOT NULL CHECK (char_length(analyst) BETWEEN 1 AND 64),
    claimed_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at      timestamptz NOT NULL
);
CREATE INDEX review_claims_analyst ON review_claims (analyst, expires_at);
