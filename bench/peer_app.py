"""The app a user would otherwise write: Flask and psycopg2, one INSERT per transaction, detection on request.

txguard's benchmarks measure it against this peer (bench/peer_bench.py), side by side over HTTP on the same
PostgreSQL. It is kept plain and honest: what a developer writes in an afternoon, with no deliberate slowness
and no tricks.

- `POST /store_data`: one transaction (a JSON object) or a list of them. Each is one
  `INSERT ... ON CONFLICT (transaction_id) DO NOTHING`, all of a request committed together. Answers
  201 `{"stored": n, "duplicates": m}`, or 400 `{"error": "..."}` for a body it cannot read (nothing stored).
- `GET /is_fraud/<account>`: decides the account's newest transaction when asked: flagged when its amount is
  over the mean plus three standard deviations of the account's previous 30 days (after at least 10
  transactions), or when it is the 11th or more within an hour. 200 `{"account_id", "transaction_id",
  "fraud", "reasons"}`, 404 for an account without transactions.

Served by Flask's own development server (werkzeug's threaded server, what `flask run` starts), the same server
class txguard's local API emulator runs on, so the HTTP layer is alike on both sides:

    python -m bench.peer_app --database-url postgresql://postgres@127.0.0.1:5432/mydb --port 5000
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.pool
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

READY_LINE = "peer app ready on {url}"

SCHEMA = """
CREATE TABLE IF NOT EXISTS peer_transactions (
    transaction_id bigint PRIMARY KEY,
    account_id bigint NOT NULL,
    ts bigint NOT NULL,
    amount numeric(14, 2) NOT NULL,
    currency text NOT NULL DEFAULT 'EUR',
    merchant_id text
);
CREATE INDEX IF NOT EXISTS peer_transactions_account_ts ON peer_transactions (account_id, ts);
"""

INSERT = """
INSERT INTO peer_transactions (transaction_id, account_id, ts, amount, currency, merchant_id)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (transaction_id) DO NOTHING
"""

HOUR_MS = 3_600_000
MONTH_MS = 30 * 86_400_000

DETECT = """
SELECT t.transaction_id, t.amount, h.n, h.mean, h.sd, v.recent
FROM (SELECT transaction_id, ts, amount FROM peer_transactions WHERE account_id = %(account)s
      ORDER BY ts DESC, transaction_id DESC LIMIT 1) t
CROSS JOIN LATERAL (
    SELECT count(*) AS n, avg(amount) AS mean, stddev_samp(amount) AS sd FROM peer_transactions
    WHERE account_id = %(account)s AND ts < t.ts AND ts >= t.ts - %(month)s) h
CROSS JOIN LATERAL (
    SELECT count(*) AS recent FROM peer_transactions
    WHERE account_id = %(account)s AND ts > t.ts - %(hour)s AND ts <= t.ts) v
"""


def row(item: Any) -> tuple[int, int, int, Decimal, str, str | None]:
    """A transaction object as an INSERT's parameters; ValueError (or KeyError, TypeError) when unreadable."""
    amount = Decimal(str(item["amount"]))
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"amount {item['amount']!r} is not a non-negative number")
    merchant = item.get("merchant_id")
    return (
        int(item["transaction_id"]),
        int(item["account_id"]),
        int(item["timestamp"]),
        amount,
        str(item.get("currency") or "EUR"),
        None if merchant is None else str(merchant),
    )


def create_app(database_url: str) -> Flask:
    """The Flask app over a small pool of connections to `database_url` (whose role may create the table)."""
    app = Flask("peer")
    pool = psycopg2.pool.ThreadedConnectionPool(1, 8, database_url)

    @contextmanager
    def transaction() -> Iterator[psycopg2.extensions.cursor]:
        conn = pool.getconn()
        try:
            with conn, conn.cursor() as cur:
                yield cur
        finally:
            pool.putconn(conn)

    with transaction() as cur:
        cur.execute(SCHEMA)

    @app.post("/store_data")
    def store_data() -> Any:
        body = request.get_json(silent=True)
        items = body if isinstance(body, list) else [body]
        try:
            rows = [row(item) for item in items]
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            return jsonify(error=f"invalid transaction: {exc!r}"), 400
        stored = 0
        with transaction() as cur:
            for values in rows:
                cur.execute(INSERT, values)
                stored += cur.rowcount
        return jsonify(stored=stored, duplicates=len(rows) - stored), 201

    @app.get("/is_fraud/<int:account>")
    def is_fraud(account: int) -> Any:
        with transaction() as cur:
            cur.execute(DETECT, {"account": account, "hour": HOUR_MS, "month": MONTH_MS})
            found = cur.fetchone()
        if found is None:
            return jsonify(error=f"no transactions for account {account}"), 404
        transaction_id, amount, n, mean, sd, recent = found
        reasons = []
        if n >= 10 and sd is not None and amount > mean + 3 * sd:
            reasons.append(f"amount {amount} is over the 30-day mean {mean:.2f} plus 3 standard deviations")
        if recent > 10:
            reasons.append(f"{recent} transactions within an hour")
        return jsonify(account_id=account, transaction_id=transaction_id, fraud=bool(reasons), reasons=reasons)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer_app")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000, help="0 for a free one")
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, create_app(args.database_url), threaded=True)
    print(READY_LINE.format(url=f"http://{args.host}:{server.server_port}"), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
