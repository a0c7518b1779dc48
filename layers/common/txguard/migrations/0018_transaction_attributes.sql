-- A transaction's optional attributes (txguard/attributes.py gives their canonical forms): how it was paid
-- (channel), where (country, ISO 3166-1 alpha-2), at what kind of merchant (merchant_category, four ISO 18245
-- digits), with which card and device (tokens, never a card number) from which IP address (canonical text), and
-- free string values (metadata). NULL when absent; ADD COLUMN without a default rewrites no row.
ALTER TABLE transactions
    ADD COLUMN channel text,
    ADD COLUMN country text,
    ADD COLUMN merchant_category text,
    ADD COLUMN card_id text,
    ADD COLUMN ip_address text,
    ADD COLUMN device_id text,
    ADD COLUMN metadata jsonb;
