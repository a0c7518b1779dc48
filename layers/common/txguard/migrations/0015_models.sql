-- Trained models beside the rules: the model registry, and detector versions (what decides: a rule set, the
-- champion model and the shadow models). txguard/storage/models.py and txguard/storage/detector_versions.py
-- are the only writers; every status change and every rule set change writes a new detector version in the
-- same database transaction, under one advisory lock.
--
-- Version numbers are max + 1 under that lock (as rule_sets' are): numbered without gaps, in commit order, and
-- the service's role needs no privilege on a sequence.

CREATE TABLE model_versions (
    version            integer PRIMARY KEY,
    name               text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    artifact_sha256    text NOT NULL CHECK (artifact_sha256 ~ '^[0-9a-f]{64}$'),  -- models/<sha256>.json
    features           text[] NOT NULL CHECK (cardinality(features) > 0),
    features_hash      text NOT NULL CHECK (features_hash ~ '^[0-9a-f]{64}$'),  -- sha256 of the names, "\n"-joined
    train_from         timestamptz NOT NULL,  -- transactions in [train_from, train_to) trained the model
    train_to           timestamptz NOT NULL,
    gap_days           integer NOT NULL CHECK (gap_days >= 0),
    valid_from         timestamptz NOT NULL,  -- [valid_from, valid_to): the validation window of the metrics
    valid_to           timestamptz NOT NULL,
    label_cutoff       timestamptz NOT NULL,  -- nothing decided or labelled at or after it was read
    seed               bigint NOT NULL,
    params             jsonb NOT NULL,
    metrics            jsonb NOT NULL,
    thresholds         jsonb NOT NULL,
    status             text NOT NULL DEFAULT 'candidate'
                       CHECK (status IN ('candidate', 'shadow', 'champion', 'retired')),
    -- The champion this version replaced when it was last promoted: what a rollback brings back.
    previous_champion  integer REFERENCES model_versions (version),
    created_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_by         text NOT NULL DEFAULT current_user,
    CHECK (train_from < train_to AND train_to <= valid_from AND valid_from < valid_to AND valid_to <= label_cutoff)
);

-- At most one champion, whatever the code does.
CREATE UNIQUE INDEX model_versions_one_champion ON model_versions ((true)) WHERE status = 'champion';

CREATE TABLE detector_versions (
    version                 integer PRIMARY KEY,
    rule_set_version        integer NOT NULL REFERENCES rule_sets (version),
    champion_model_version  integer REFERENCES model_versions (version),
    shadow_model_versions   integer[] NOT NULL DEFAULT '{}',
    created_at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_by              text NOT NULL DEFAULT current_user,
    comment                 text NOT NULL DEFAULT ''
);

-- The detector that decides today's rule set, for a database that has one.
INSERT INTO detector_versions (version, rule_set_version, comment)
SELECT 1, max(version), 'rule set version ' || max(version) FROM rule_sets HAVING max(version) IS NOT NULL;
