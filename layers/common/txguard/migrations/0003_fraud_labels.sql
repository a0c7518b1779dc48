-- The truth about generated traffic (txguard generate, the scheduled generate function): which fraud
-- pattern produced each transaction, 'genuine' for ordinary traffic. Only `txguard evaluate` reads it;
-- the detector never does. No foreign key to transactions: a label is written before its transaction
-- is stored (or for one that never is, when a run fails half way).
CREATE TABLE fraud_labels (
    transaction_id  bigint PRIMARY KEY,
    pattern         text NOT NULL CHECK (pattern ~ '^[a-z][a-z0-9_]{0,62}$'),
    run_id          bigint NOT NULL,   -- transaction ids of a run are [run_id << 23, (run_id + 1) << 23)
    labelled_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX fraud_labels_run ON fraud_labels (run_id);

GRANT SELECT, INSERT ON fraud_labels TO txguard_service;
