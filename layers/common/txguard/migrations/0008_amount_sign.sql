-- The table enforces an amount's sign itself, whatever writes to it. Zero is allowed here on purpose: a
-- card verification of amount 0 is a valid transaction for the table; the API still asks for amount > 0.
ALTER TABLE transactions ADD CONSTRAINT transactions_amount_not_negative CHECK (amount >= 0);
