"""Reserve stock with a check span around the read, a use span around the write, and an
audit record for each committed write, sent to `toctou run` over OTLP/HTTP.

Two buyers race for the last unit of a SKU: buyer B reserves it between buyer A's check and
A's write. With a plain write (`reserve(..., conditional=False)`) A sells a unit that is no
longer there, and toctou reports a `stale_check` naming B's write; with a write conditioned
on the checked version, A's write is refused (`toctou.use.outcome` = `conflict`): a race
prevented, not a finding.

    pip install -r examples/python/requirements.txt
    python examples/python/inventory.py          # against `toctou run` on localhost
"""

import os
import threading
import time

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

TOCTOU_OTLP_HTTP = os.environ.get("TOCTOU_OTLP_HTTP", "http://127.0.0.1:4318")

resource = Resource.create({"service.name": "inventory"})
tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(
    BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{TOCTOU_OTLP_HTTP}/v1/traces"))
)
logger_provider = LoggerProvider(resource=resource)
logger_provider.add_log_record_processor(
    BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{TOCTOU_OTLP_HTTP}/v1/logs"))
)
tracer = tracer_provider.get_tracer("inventory")
audit_log = logger_provider.get_logger("inventory.audit")


class Db:
    """Stand-in for the system of record: SKU -> [quantity, integer version]."""

    def __init__(self, rows):
        self.rows, self.lock = rows, threading.Lock()

    def read(self, sku):
        """SELECT qty, version FROM stock WHERE sku = %s"""
        with self.lock:
            return tuple(self.rows[sku])

    def take_one(self, sku):
        """UPDATE stock SET qty = qty - 1, version = version + 1 WHERE sku = %s
        RETURNING version - 1, version: the pre-image version and the version written."""
        with self.lock:
            qty, version = self.rows[sku]
            self.rows[sku] = [qty - 1, version + 1]
            return version, version + 1

    def take_one_if_version(self, sku, expected):
        """UPDATE stock SET qty = qty - 1, version = version + 1 WHERE sku = %s AND version = %s
        Returns the version after the write, or None when the version had moved on."""
        with self.lock:
            qty, version = self.rows[sku]
            if version != expected or qty == 0:
                return None
            self.rows[sku] = [qty - 1, version + 1]
            return version + 1


def reserve(db, order_id, sku, conditional=True, after_check=lambda: None):
    common = {
        "toctou.resource": sku,
        "toctou.request_id": order_id,
        "toctou.operation": "reserve",
    }

    # Check: end the span as soon as the read returns; its end is the check's event time.
    with tracer.start_as_current_span(
        "check stock",
        attributes={**common, "toctou.phase": "check", "toctou.check.source": "primary"},
    ) as check:
        qty, seen = db.read(sku)
        check.set_attribute("toctou.resource.version", str(seen))  # a string, not an int
        check.set_attribute("toctou.check.decision", "allow" if qty > 0 else "deny")
    if qty <= 0:
        return False

    after_check()  # the window between the decision and the action

    # Use: a sibling of the check, started right before the write; its start is the use's
    # event time. Its version is the pre-image the write acted on.
    with tracer.start_as_current_span(
        "reserve stock", attributes={**common, "toctou.phase": "use"}
    ) as use:
        if conditional:
            after = db.take_one_if_version(sku, seen)
            if after is None:
                # Our own precondition caught the race: a prevented race, not a finding.
                use.set_attribute("toctou.resource.version", str(seen))
                use.set_attribute("toctou.use.outcome", "conflict")
                return False
            before = seen
        else:
            before, after = db.take_one(sku)
        use.set_attribute("toctou.resource.version", str(before))
        use.set_attribute("toctou.use.outcome", "ok")
        audit_write("update", sku, after, order_id)
        return True


def audit_write(action, sku, version_after, request_id):
    """The audit record of a committed write. Emit it from the system of record (or right
    after the commit): its timestamp is taken as the commit time."""
    audit_log.emit(
        LogRecord(
            timestamp=time.time_ns(),
            severity_number=SeverityNumber.INFO,
            body=f"{action} {sku}",
            attributes={
                "toctou.audit.action": action,
                "toctou.resource": sku,
                "toctou.resource.version": str(version_after),
                "toctou.request_id": request_id,
                "toctou.actor": "inventory",
            },
        )
    )


def race(db, sku, conditional):
    """Buyer B reserves between buyer A's check and A's write. Returns (A sold, B sold)."""
    a_checked, b_done, sold = threading.Event(), threading.Event(), {}

    def buyer_b():
        a_checked.wait()
        sold["B"] = reserve(db, f"order-B-{sku[-2:]}", sku, conditional)
        b_done.set()

    b = threading.Thread(target=buyer_b)
    b.start()
    sold["A"] = reserve(
        db, f"order-A-{sku[-2:]}", sku, conditional,
        after_check=lambda: (a_checked.set(), b_done.wait()),
    )
    b.join()
    return sold["A"], sold["B"]


if __name__ == "__main__":
    db = Db({"inventory/sku-42": [1, 7], "inventory/sku-43": [1, 3]})
    a, b = race(db, "inventory/sku-42", conditional=False)
    print(f"plain write:       A sold {a}, B sold {b}, stock now {db.rows['inventory/sku-42'][0]}")
    a, b = race(db, "inventory/sku-43", conditional=True)
    print(f"conditional write: A sold {a}, B sold {b}, stock now {db.rows['inventory/sku-43'][0]}")
    # Flush before exit: batched spans and records still in memory are lost otherwise.
    tracer_provider.shutdown()
    logger_provider.shutdown()
