"""A small shop: stock, vouchers, sign-ups and money transfers over PostgreSQL.

Each write endpoint comes twice. The plain one is the classic check-then-act an ORM produces:
read the row, decide in Python, save the whole row back with the values computed from what
was read, all in one READ COMMITTED transaction. Two such requests can both pass the check
before either writes, and the second write silently replaces the first (lost update, double
redemption, duplicate account, money created from nothing). The `_safe` twin closes the race
the usual way: a row lock, a compare-and-swap, a unique constraint, or SERIALIZABLE with
retries.

The only tracing is OpenTelemetry's auto-instrumentation: Flask (a server span per request,
joining the caller's W3C `traceparent`) and psycopg (a span per statement, with its
parameters unless --no-params). Spans go over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT.

    python app.py --dsn postgres://... --setup           # (re)create the tables, then exit
    python app.py --dsn postgres://... --port 8000       # serve
"""

import argparse
import logging
import random
import signal
import sys
import time

import psycopg
from flask import Flask, jsonify, request
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

SCHEMA = """
DROP TABLE IF EXISTS items, orders, item_history, vouchers, redemptions, users, users_safe,
    accounts, transfers, account_history CASCADE;
DROP FUNCTION IF EXISTS record_item_version() CASCADE;
DROP FUNCTION IF EXISTS record_account_version() CASCADE;

CREATE TABLE items (id int PRIMARY KEY, stock int NOT NULL, version int NOT NULL);
CREATE TABLE orders (id serial PRIMARY KEY, item_id int, qty int, read_version int, txid bigint);
CREATE TABLE item_history (id serial PRIMARY KEY, item_id int, old_version int,
    new_version int, txid bigint);
CREATE TABLE vouchers (code text PRIMARY KEY, used boolean NOT NULL, version int NOT NULL);
CREATE TABLE redemptions (id serial PRIMARY KEY, code text, txid bigint);
-- No unique constraint on purpose: only the application's check keeps e-mails unique.
CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);
CREATE TABLE users_safe (id serial PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL, version int NOT NULL);
CREATE TABLE transfers (id serial PRIMARY KEY, src int, dst int, amount int, txid bigint);
CREATE TABLE account_history (id serial PRIMARY KEY, account_id int, old_version int,
    new_version int, txid bigint);

-- Which version each UPDATE actually replaced, and in which transaction: compared with the
-- version the request read, this tells a lost update from a clean one.
CREATE FUNCTION record_item_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO item_history (item_id, old_version, new_version, txid)
    VALUES (OLD.id, OLD.version, NEW.version, txid_current());
  RETURN NEW;
END $$;
CREATE TRIGGER items_history AFTER UPDATE ON items
  FOR EACH ROW EXECUTE FUNCTION record_item_version();
CREATE FUNCTION record_account_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO account_history (account_id, old_version, new_version, txid)
    VALUES (OLD.id, OLD.version, NEW.version, txid_current());
  RETURN NEW;
END $$;
CREATE TRIGGER accounts_history AFTER UPDATE ON accounts
  FOR EACH ROW EXECUTE FUNCTION record_account_version();

INSERT INTO items SELECT i, 1000, 1 FROM generate_series(1, 5) i;
INSERT INTO vouchers SELECT 'v' || i, false, 1 FROM generate_series(1, 200) i;
INSERT INTO accounts SELECT i, 1000, 1 FROM generate_series(1, 10) i;
"""

app = Flask(__name__)
DSN = ""
THINK_MS = 5.0


def think():
    """A little work between the check and the act, as real code has; it widens the window."""
    time.sleep(random.uniform(0, THINK_MS) / 1000)


def connect():
    # One connection per request, like a simple app without a pool. autocommit so that
    # `with conn.transaction()` below is exactly one BEGIN ... COMMIT.
    return psycopg.connect(DSN, autocommit=True)


def refused(reason):
    return jsonify(ok=False, reason=reason), 409


@app.errorhandler(Exception)
def error(e):
    if isinstance(e, HTTPException):  # 404, 405, a missing argument: Flask's own answer
        return e
    return jsonify(ok=False, error=f"{type(e).__name__}: {e}"), 500


def buy(item_id, for_update):
    qty = int(request.args.get("qty", 1))
    lock = " FOR UPDATE" if for_update else ""
    with connect() as conn, conn.transaction():
        cur = conn.cursor()
        cur.execute(f"SELECT stock, version FROM items WHERE id = %s{lock}", (item_id,))
        row = cur.fetchone()
        if row is None:
            return refused("no such item")
        stock, version = row
        if stock < qty:
            return refused("out of stock")
        think()
        # A full-row save of what Python computed from the read, as an ORM sends it.
        cur.execute(
            "UPDATE items SET stock = %s, version = %s WHERE id = %s",
            (stock - qty, version + 1, item_id),
        )
        cur.execute(
            "INSERT INTO orders (item_id, qty, read_version, txid) "
            "VALUES (%s, %s, %s, txid_current()) RETURNING txid",
            (item_id, qty, version),
        )
        txid = cur.fetchone()[0]
    return jsonify(ok=True, txid=txid, read_version=version, stock=stock - qty)


@app.post("/buy/<int:item_id>")
def buy_plain(item_id):
    return buy(item_id, for_update=False)


@app.post("/buy_safe/<int:item_id>")
def buy_safe(item_id):
    # FOR UPDATE: a second buyer waits at its read until the first commits, then sees its write.
    return buy(item_id, for_update=True)


def redeem(code, compare_and_swap):
    with connect() as conn, conn.transaction():
        cur = conn.cursor()
        cur.execute("SELECT used, version FROM vouchers WHERE code = %s", (code,))
        row = cur.fetchone()
        if row is None:
            return refused("no such voucher")
        used, version = row
        if used:
            return refused("already used")
        think()
        if compare_and_swap:
            # Only if nobody changed the voucher since we read it; otherwise we lost the race.
            cur.execute(
                "UPDATE vouchers SET used = %s, version = %s WHERE code = %s AND version = %s",
                (True, version + 1, code, version),
            )
            if cur.rowcount == 0:
                return refused("redeemed concurrently")
        else:
            cur.execute(
                "UPDATE vouchers SET used = %s, version = %s WHERE code = %s",
                (True, version + 1, code),
            )
        cur.execute(
            "INSERT INTO redemptions (code, txid) VALUES (%s, txid_current()) RETURNING txid",
            (code,),
        )
        txid = cur.fetchone()[0]
    return jsonify(ok=True, txid=txid, read_version=version)


@app.post("/redeem/<code>")
def redeem_plain(code):
    return redeem(code, compare_and_swap=False)


@app.post("/redeem_safe/<code>")
def redeem_safe(code):
    return redeem(code, compare_and_swap=True)


def signup(table, on_conflict):
    email = request.args["email"]
    with connect() as conn, conn.transaction():
        cur = conn.cursor()
        cur.execute(f"SELECT 1 FROM {table} WHERE email = %s", (email,))
        if cur.fetchone() is not None:
            return refused("e-mail taken")
        think()
        cur.execute(f"INSERT INTO {table} (email) VALUES (%s){on_conflict}", (email,))
        if cur.rowcount == 0:
            return refused("e-mail taken concurrently")
    return jsonify(ok=True, created=True)


@app.post("/signup")
def signup_plain():
    return signup("users", "")


@app.post("/signup_safe")
def signup_safe():
    # The unique constraint is the real check; ON CONFLICT turns the loser's insert into a no-op.
    return signup("users_safe", " ON CONFLICT (email) DO NOTHING")


def transfer_once(conn, src, dst, amount, serializable):
    with conn.transaction():
        cur = conn.cursor()
        if serializable:
            # Sent through the cursor (not as a connection setting) so that it is traced too.
            cur.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        read = {}
        for account in (src, dst):
            cur.execute("SELECT balance, version FROM accounts WHERE id = %s", (account,))
            read[account] = cur.fetchone()
        if read[src] is None or read[dst] is None:
            return None, "no such account"
        if read[src][0] < amount:
            return None, "insufficient funds"
        think()
        balance = {src: read[src][0] - amount, dst: read[dst][0] + amount}
        # In id order, so that two opposite transfers cannot deadlock each other.
        for account in sorted((src, dst)):
            cur.execute(
                "UPDATE accounts SET balance = %s, version = %s WHERE id = %s",
                (balance[account], read[account][1] + 1, account),
            )
        cur.execute(
            "INSERT INTO transfers (src, dst, amount, txid) "
            "VALUES (%s, %s, %s, txid_current()) RETURNING txid",
            (src, dst, amount),
        )
        txid = cur.fetchone()[0]
    return {"txid": txid, "read_versions": {str(a): read[a][1] for a in (src, dst)}}, None


def transfer(serializable):
    src, dst, amount = (int(request.args[k]) for k in ("src", "dst", "amount"))
    if src == dst:
        return refused("same account")
    retries = 0
    with connect() as conn:
        while True:
            try:
                done, reason = transfer_once(conn, src, dst, amount, serializable)
                break
            except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected):
                # The database refused an interleaving it cannot serialize: run it all again.
                if not serializable or retries >= 10:
                    raise
                retries += 1
    if done is None:
        return jsonify(ok=False, reason=reason, retries=retries), 409
    return jsonify(ok=True, retries=retries, **done)


@app.post("/transfer")
def transfer_plain():
    return transfer(serializable=False)


@app.post("/transfer_safe")
def transfer_safe():
    return transfer(serializable=True)


@app.post("/flush")
def flush():
    # Lets a caller wait until every span so far has been exported.
    return jsonify(ok=trace.get_tracer_provider().force_flush())


def arguments(description):
    """The command line every shop takes (../orm_shop/app.py's too)."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free one")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--setup", action="store_true", help="recreate the schema and exit")
    parser.add_argument("--no-params", action="store_true",
                        help="leave statement parameters out of the spans")
    parser.add_argument("--think-ms", type=float, default=5.0,
                        help="up to this long between a check and its act")
    return parser.parse_args()


def serve(flask_app, service, args):
    """Traces `flask_app` and psycopg as `service` (the only instrumentation), serves it, and
    exports what is still queued on SIGTERM or SIGINT."""
    # Exporter endpoint, headers etc. come from the standard OTEL_EXPORTER_OTLP_* variables.
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=100))
    trace.set_tracer_provider(provider)
    FlaskInstrumentor().instrument_app(flask_app, excluded_urls="flush")
    PsycopgInstrumentor().instrument(capture_parameters=not args.no_params, enable_commenter=False)

    def stop(signum, frame):
        provider.shutdown()  # exports what is still queued
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = make_server(args.host, args.port, flask_app, threaded=True)
    # The socket is bound: a caller waiting for this line can connect right away.
    print(f"shop: listening on http://{args.host}:{server.server_port}", file=sys.stderr, flush=True)
    server.serve_forever()


def main():
    global DSN, THINK_MS
    args = arguments(__doc__)
    DSN, THINK_MS = args.dsn, args.think_ms

    if args.setup:
        # Before any instrumentation: setting up is not part of the traced workload.
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(SCHEMA)
        print("shop: schema created", file=sys.stderr)
        return

    serve(app, "shop", args)


if __name__ == "__main__":
    main()
