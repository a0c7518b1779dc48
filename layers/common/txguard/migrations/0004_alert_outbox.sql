-- FraudDetected events waiting to be published, written in the same database transaction as the
-- transactions they report: an alert exists exactly when its decision was committed, whatever happens to
-- the request afterwards (EventBridge slow or down, the function timed out, the commit's acknowledgement
-- lost). Rows are published at least once and deleted once EventBridge has accepted them (txguard/outbox.py).
CREATE TABLE alert_outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id   bigint NOT NULL UNIQUE,   -- one alert per flagged transaction
    detail           jsonb NOT NULL,           -- the event's detail, as published
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- Due time: now for a new row; while a publisher holds the row, the end of its lease, which is also
    -- when the row is retried if that publisher failed or vanished.
    next_attempt_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Drains read the due rows, oldest due first.
CREATE INDEX alert_outbox_due ON alert_outbox (next_attempt_at);

-- ==== service role grants: the functions' group role (as in 0001); adapt here if it is renamed ====
GRANT SELECT, INSERT, UPDATE, DELETE ON alert_outbox TO txguard_service;
