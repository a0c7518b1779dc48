-- Lists: named sets of values of one kind (accounts, merchants, cards, countries, IP addresses, devices, merchant
-- categories) that rules read (`merchant_category IN LIST high_risk_mcc`) and that, with an action, allow or block
-- by themselves. txguard/storage/lists.py is the only writer; values arrive in the canonical text of
-- txguard/attributes.py, so that a value matches a transaction's attribute however either came in.
--
-- Every change (a list created or redefined, items added, changed or removed) increments the list's version and
-- writes one row per change to list_changes, in the same database transaction, under the list row's lock.
--
-- list_items and list_changes name their list without a foreign key: every writer locks the list's row first
-- (so the list exists), lists are never deleted, and a foreign key's per-row check would halve the rate of a
-- 1,000,000-item import (bench/lists_bench.py).

CREATE TABLE lists (
    name         text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),  -- as a rule id
    kind         text NOT NULL
                 CHECK (kind IN ('account', 'merchant', 'card', 'country', 'ip', 'device', 'merchant_category')),
    -- NULL: only rules read it. allow / block: a match also decides by itself (the documented precedence).
    action       text CHECK (action IN ('allow', 'block')),
    description  text CHECK (char_length(description) BETWEEN 1 AND 500),
    version      integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_by   text NOT NULL CHECK (char_length(created_by) BETWEEN 1 AND 200),
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_by   text NOT NULL CHECK (char_length(updated_by) BETWEEN 1 AND 200)
);

-- The current items only: a removed item is deleted (its history is in list_changes). An item applies while
-- expires_at IS NULL OR expires_at > now; an expired one stays until removed, and no longer matches.
CREATE TABLE list_items (
    list_name   text NOT NULL,
    value       text NOT NULL CHECK (char_length(value) BETWEEN 1 AND 100),
    expires_at  timestamptz CHECK (expires_at = date_trunc('milliseconds', expires_at)),
    note        text CHECK (char_length(note) BETWEEN 1 AND 200),
    added_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    added_by    text NOT NULL CHECK (char_length(added_by) BETWEEN 1 AND 200),
    -- Memberships are looked up by (list_name, value): one index probe per value asked, whatever the list's size.
    PRIMARY KEY (list_name, value)
);

-- The audit: what changed, in which version, by whom and when. Append-only; kept when items are removed.
-- operation: 'create' and 'update' (the list's definition: kind, action, description in the row), 'add' (new
-- items), 'change' (items whose expiry or note changed), 'remove' (items deleted). An item operation's row holds
-- up to 1,000 items of one version as parallel arrays (value, and expiry and note after the change, before it for
-- 'remove'): a 1,000,000-item import writes 1,000 audit rows, not a million (bench/lists_bench.py).
CREATE TABLE list_changes (
    change_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    list_name    text NOT NULL,
    version      integer NOT NULL CHECK (version >= 1),
    operation    text NOT NULL CHECK (operation IN ('create', 'update', 'add', 'change', 'remove')),
    item_values  text[],
    expiries     timestamptz[],
    notes        text[],
    kind         text,  -- the definition after a 'create' or 'update'
    action       text,
    description  text,
    actor        text NOT NULL CHECK (char_length(actor) BETWEEN 1 AND 200),
    changed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((item_values IS NULL) = (operation IN ('create', 'update'))),
    CHECK (item_values IS NULL OR (cardinality(item_values) BETWEEN 1 AND 1000
                                   AND cardinality(expiries) = cardinality(item_values)
                                   AND cardinality(notes) = cardinality(item_values)))
);

-- GET /lists/{name}/changes pages through one list's changes in order.
CREATE INDEX list_changes_by_list ON list_changes (list_name, change_id);
