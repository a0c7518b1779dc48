-- Which unit of work last stored transactions for the account: a random 63-bit number that write_totals sets in
-- the statement that writes the running totals, in the same database transaction as the transactions themselves
-- (NULL: not known).
--
-- An ingest function keeps each account's tail (its stored transactions within the rules' reach) in memory after
-- a batch commits (txguard.account_tails). The tail it kept is the account's stored rows exactly when the number
-- it reads under the account's lock is the one it wrote: any other writer, in this function or another, through
-- any transport, writes a number of its own. A database restored to a copy holds the number of the unit of work
-- that left it so, and the same rows with it.
--
-- Adding a nullable column without a default rewrites nothing and takes a brief lock.
ALTER TABLE account_stats ADD COLUMN written_by bigint;

-- A writer that does not know of the column (code from before this migration, still serving while a deploy rolls
-- out; a script) would leave the last number in place while storing rows: the function that wrote it would then
-- take its kept tail for the account's rows, and miss the ones stored since. Any update that leaves the number as
-- it was clears it instead, so that such a writer turns the kept tails of its accounts off rather than passing
-- their check.
CREATE FUNCTION txguard_account_stats_writer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.written_by IS NOT DISTINCT FROM OLD.written_by THEN
        NEW.written_by := NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER account_stats_writer BEFORE UPDATE ON account_stats
    FOR EACH ROW EXECUTE FUNCTION txguard_account_stats_writer();
