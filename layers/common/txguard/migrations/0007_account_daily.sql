-- Per-account, per-day totals of the stored transactions, maintained in the same database transaction as
-- each insert. "The account's history before time t" is then the sum of the days before t's day plus one
-- day of transactions: a late or back-dated transaction costs what a current one costs, and a recomputation
-- can start anywhere in an account's history without reading what came before.
CREATE TABLE account_daily (
    account_id     bigint NOT NULL,
    day            integer NOT NULL,  -- UTC days since 1970-01-01: epoch milliseconds div 86,400,000
    tx_count       bigint NOT NULL,
    amount_sum     numeric NOT NULL,
    amount_sum_sq  numeric NOT NULL,
    amount_max     numeric(19, 4) NOT NULL,
    last_ts        timestamptz NOT NULL,
    PRIMARY KEY (account_id, day)
);

INSERT INTO account_daily (account_id, day, tx_count, amount_sum, amount_sum_sq, amount_max, last_ts)
SELECT account_id, div(txguard_ts_to_ms(ts), 86400000)::integer, count(*), sum(amount), sum(amount * amount),
       max(amount), max(ts)
FROM transactions
GROUP BY 1, 2;

GRANT SELECT, INSERT, UPDATE ON account_daily TO txguard_service;
