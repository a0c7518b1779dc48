-- The millisecond <-> timestamptz functions of 0001, written so that the planner can inline them.
--
-- 0001 declares both IMMUTABLE, but their bodies are only STABLE: timestamptz + interval and extract(... FROM
-- timestamptz) depend, in general, on the session's TimeZone. PostgreSQL never inlines a function whose body is
-- more volatile than the function, so every call ran as a SQL function of its own (an executor started and
-- stopped per call: about 1.5 µs of backend CPU for txguard_ms_to_ts and 2 µs for txguard_ts_to_ms, against 0.1
-- and 0.5 µs inlined; medians over 100,000 calls in one query). Batch ingest made one or two such calls per
-- transaction (the running totals it reads and writes, the per-day totals, the tail reads' bounds); detect_fraud,
-- the console and the read paths make one or more per row they read.
--
-- The same arithmetic on timestamp (without time zone), read as UTC, is IMMUTABLE, and gives the same value for
-- every input: the interval is a count of milliseconds (no days or months, which are where the time zone could
-- matter), and a timestamptz is the UTC timestamp of the same microsecond count. txguard_day and
-- txguard_day_start, which call these, become inlinable with them. CREATE OR REPLACE keeps each function (and
-- what depends on it) as it is: running this file again changes nothing.
CREATE OR REPLACE FUNCTION txguard_ms_to_ts(ms bigint) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (timestamp 'epoch' + ms * interval '1 millisecond') AT TIME ZONE 'UTC';
CREATE OR REPLACE FUNCTION txguard_ts_to_ms(ts timestamptz) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (extract(epoch FROM ts AT TIME ZONE 'UTC') * 1000)::bigint;
