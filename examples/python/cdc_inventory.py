"""Reserve stock in PostgreSQL with a check span around the read and a use span around the
write, sent to `toctou run` over OTLP/HTTP. The audit records come from PostgreSQL's change
stream (`toctou run --cdc-postgres`): this program emits none, it only names the request of
each transaction that writes (`name_request`, the first statement of the transaction).

Two buyers race for the last unit of a SKU: buyer B reserves it between buyer A's check and
A's write. With a plain write A sells a unit that is no longer there, and toctou reports a
`stale_check` naming B's committed write, with B's request id; with a write conditioned on
the checked version, A's write finds no row (`toctou.use.outcome` = `conflict`): a race
prevented, not a finding.

    pip install -r examples/python/requirements.txt
    toctou run --cdc-postgres "$DATABASE_URL"       # PostgreSQL 14+ with wal_level=logical
    DATABASE_URL=postgres://... python examples/python/cdc_inventory.py

The table (TOCTOU_EXAMPLE_TABLE, default `inventory`) is created when missing; the SKU
(TOCTOU_EXAMPLE_SKU) is a new one for each run unless given.
"""

import os
import uuid

import psycopg
from psycopg import sql

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

TOCTOU_OTLP_HTTP = os.environ.get("TOCTOU_OTLP_HTTP", "http://127.0.0.1:4318")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
TABLE = os.environ.get("TOCTOU_EXAMPLE_TABLE", "inventory")
SKU = os.environ.get("TOCTOU_EXAMPLE_SKU") or f"sku-{uuid.uuid4().hex[:8]}"

resource = Resource.create({"service.name": "inventory"})
tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(
    BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{TOCTOU_OTLP_HTTP}/v1/traces"))
)
tracer = tracer_provider.get_tracer("inventory")


def name_request(cursor, request_id):
    """Names the request of the cursor's transaction in the change stream (toctou.request_id)."""
    cursor.execute("SELECT pg_logical_emit_message(true, 'toctou.request_id', %s)", (request_id,))


def q(text):
    """`text` with {table} filled in, quoted as an identifier."""
    return sql.SQL(text).format(table=sql.Identifier(TABLE))


def restock(conn, sku):
    """One unit in stock. The version only ever goes up, also when the row is reset."""
    conn.execute(
        q("INSERT INTO {table} VALUES (%s, 1, 1) ON CONFLICT (sku) "
          "DO UPDATE SET stock = 1, version = {table}.version + 1"),
        (sku,),
    )


def reserve(conn, request_id, sku, conditional, after_check=lambda: None):
    common = {
        # How toctou names the row's changes: public.<table>/<primary key>.
        "toctou.resource": f"public.{TABLE}/{sku}",
        "toctou.request_id": request_id,
        "toctou.operation": "reserve",
    }

    # Check: end the span as soon as the read returns; its end is the check's event time.
    with tracer.start_as_current_span(
        "check stock",
        attributes={**common, "toctou.phase": "check", "toctou.check.source": "primary"},
    ) as check:
        stock, seen = conn.execute(
            q("SELECT stock, version FROM {table} WHERE sku = %s"), (sku,)
        ).fetchone()
        check.set_attribute("toctou.resource.version", str(seen))  # a string, not an int
        check.set_attribute("toctou.check.decision", "allow" if stock > 0 else "deny")
    if stock <= 0:
        return False

    after_check()  # the window between the decision and the action

    # Use: a sibling of the check around the whole write transaction, commit included; its
    # start is the use's event time. Its version is the pre-image the write acted on.
    with tracer.start_as_current_span(
        "reserve stock", attributes={**common, "toctou.phase": "use"}
    ) as use:
        with conn.transaction(), conn.cursor() as cur:
            name_request(cur, request_id)
            if conditional:
                cur.execute(
                    q("UPDATE {table} SET stock = stock - 1, version = version + 1 "
                      "WHERE sku = %s AND version = %s RETURNING version"),
                    (sku, seen),
                )
            else:
                cur.execute(
                    q("UPDATE {table} SET stock = stock - 1, version = version + 1 "
                      "WHERE sku = %s RETURNING version"),
                    (sku,),
                )
            row = cur.fetchone()
        if row is None:
            # Our own precondition caught the race: a prevented race, not a finding.
            use.set_attribute("toctou.resource.version", str(seen))
            use.set_attribute("toctou.use.outcome", "conflict")
            return False
        use.set_attribute("toctou.resource.version", str(row[0] - 1))
        use.set_attribute("toctou.use.outcome", "ok")
        return True


def race(conn_a, conn_b, sku, round_, conditional):
    """Buyer B reserves between buyer A's check and A's write. Returns (A sold, B sold)."""
    restock(conn_a, sku)
    sold = {}

    def buyer_b():
        sold["B"] = reserve(conn_b, f"order-B{round_}-{sku}", sku, conditional)

    sold["A"] = reserve(conn_a, f"order-A{round_}-{sku}", sku, conditional, after_check=buyer_b)
    return sold["A"], sold["B"]


def stock_of(conn, sku):
    return conn.execute(q("SELECT stock FROM {table} WHERE sku = %s"), (sku,)).fetchone()[0]


if __name__ == "__main__":
    # Autocommit: a read is a statement of its own; a write is a `conn.transaction()`.
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn_a, \
            psycopg.connect(DATABASE_URL, autocommit=True) as conn_b:
        conn_a.execute(q("CREATE TABLE IF NOT EXISTS {table} "
                         "(sku text PRIMARY KEY, stock int NOT NULL, version bigint NOT NULL)"))
        a, b = race(conn_a, conn_b, SKU, 1, conditional=False)
        print(f"plain write:       A sold {a}, B sold {b}, stock now {stock_of(conn_a, SKU)}")
        a, b = race(conn_a, conn_b, SKU, 2, conditional=True)
        print(f"conditional write: A sold {a}, B sold {b}, stock now {stock_of(conn_a, SKU)}")
    # Flush before exit: batched spans still in memory are lost otherwise.
    tracer_provider.shutdown()
    print(f"toctou should report one stale_check, for order-A1-{SKU}, naming the write of "
          f"order-B1-{SKU} on public.{TABLE}/{SKU}; nothing for order-A2-{SKU} (conflict)")
