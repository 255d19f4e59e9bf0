#!/usr/bin/env python3
"""Records the database client spans that real ORMs and drivers produce, for toctou-sql's
tests (sql/tests/orm.rs reads the output, sql/testdata/orm_spans.jsonl).

Check-then-act code as applications write it, run against a real PostgreSQL through
psycopg 3 with OpenTelemetry's psycopg instrumentation (parameter capture on) and an
in-memory span exporter:

- Django's ORM (settings configured here, models defined here, tables made with the
  schema editor),
- SQLAlchemy 2.x, ORM and Core (the psycopg dialect),
- plain psycopg.

Each span becomes one JSON line: {"source", "what", "attributes"}, the attributes being
the span's `db.*` attributes exactly as the instrumentation recorded them. Table creation
runs with no span recorded (DDL is no check and no use); connecting is recorded, since the
statements drivers send when they connect show up in production too.

Needs: Django, SQLAlchemy 2, psycopg[binary] 3, opentelemetry-sdk,
opentelemetry-instrumentation-psycopg (and -dbapi, which it uses), and a PostgreSQL server
where the URL's user may create a database:

    python capture.py postgres://postgres@127.0.0.1:5432/postgres > orm_spans.jsonl

orm_spans.jsonl was recorded with Python 3.11, Django 5.2.20, SQLAlchemy 2.1.9, psycopg
3.3.9 (binary), opentelemetry-api/-sdk 1.45.2, opentelemetry-instrumentation-psycopg and
-dbapi 0.66b2, against PostgreSQL 15 (scripts/postgres). Savepoint names carry Django's
thread id, and the psycopg part's balances differ between its two runs: a new recording
differs in those, which sql/tests/orm.rs does not check.

The psycopg part runs a second time in a child process with
OTEL_SEMCONV_STABILITY_OPT_IN=database, where the instrumentation writes the current
conventions (`db.query.text`, `db.system.name`, `db.namespace`) instead of the older ones.
"""

import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

DATABASE = "toctou_orm"


def database_url(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + name))


def create_database(server_url: str) -> None:
    """A fresh database, made before any instrumentation (no span)."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')


class Recorder:
    """Spans by step: each step's spans get the step's label (with the statement's first
    words and a counter when the step made several)."""

    def __init__(self):
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        PsycopgInstrumentor().instrument(tracer_provider=provider, capture_parameters=True)
        self.lines = []

    def unrecorded(self, fn):
        self.exporter.clear()
        result = fn()
        self.exporter.clear()
        return result

    def step(self, source, what, fn, may_send_nothing=False):
        self.exporter.clear()
        result = fn()
        spans = self.exporter.get_finished_spans()
        self.exporter.clear()
        if not spans and not may_send_nothing:
            raise SystemExit(f"{source} {what}: no span")
        seen = {}
        for span in spans:
            attributes = {k: v for k, v in span.attributes.items() if k.startswith("db.")}
            label = what
            if len(spans) > 1:
                text = attributes.get("db.statement") or attributes.get("db.query.text") or ""
                words = " ".join(re.findall(r"[A-Za-z_]+", text)[:2]).upper()
                head = words if words.startswith(("RELEASE", "ROLLBACK")) else words.split(" ")[0]
                label = f"{what}: {head}"
                seen[label] = seen.get(label, 0) + 1
                if seen[label] > 1:
                    label = f"{label} #{seen[label]}"
            self.lines.append({"source": source, "what": label, "attributes": attributes})
        return result

    def write(self, out):
        for line in self.lines:
            out.write(json.dumps(line, ensure_ascii=False) + "\n")


def run_django(rec: Recorder, url: str) -> None:
    import django
    from django.conf import settings

    u = urlsplit(url)
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": DATABASE,
                "USER": u.username or "postgres",
                "PASSWORD": u.password or "",
                "HOST": u.hostname,
                "PORT": str(u.port or 5432),
            }
        },
        INSTALLED_APPS=[],
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()

    from django.db import IntegrityError, connection, models, transaction
    from django.db.models import F

    class Product(models.Model):
        title = models.CharField(max_length=100)
        upc = models.CharField(max_length=64, unique=True)

        class Meta:
            app_label = "catalogue"

    class StockRecord(models.Model):
        product = models.ForeignKey(Product, on_delete=models.CASCADE)
        partner_sku = models.CharField(max_length=64)
        num_in_stock = models.PositiveIntegerField(default=0)
        price = models.DecimalField(max_digits=12, decimal_places=2)

        class Meta:
            app_label = "partner"

    class Voucher(models.Model):
        code = models.CharField(max_length=32, unique=True)
        used = models.BooleanField(default=False)

        class Meta:
            app_label = "voucher"

    class Basket(models.Model):
        owner_email = models.CharField(max_length=100)
        status = models.CharField(max_length=16, default="Open")

        class Meta:
            app_label = "basket"

    src = "django"
    rec.step(src, "connect", connection.ensure_connection, may_send_nothing=True)

    def create_tables():
        with connection.schema_editor() as editor:
            for model in (Product, StockRecord, Voucher, Basket):
                editor.create_model(model)
        p1 = Product.objects.create(title="Kettle", upc="9780000000001")
        p2 = Product.objects.create(title="Toaster", upc="9780000000002")
        StockRecord.objects.create(product=p1, partner_sku="K-1", num_in_stock=5, price=Decimal("19.90"))
        StockRecord.objects.create(product=p2, partner_sku="T-1", num_in_stock=1, price=Decimal("24.50"))
        Voucher.objects.create(code="SUMMER10")
        return p1, p2

    p1, p2 = rec.unrecorded(create_tables)

    # Check, then act on the value read: the lost update.
    stock = rec.step(src, "StockRecord.objects.get(product_id=...)",
                     lambda: StockRecord.objects.get(product_id=p1.id))

    def full_save():
        stock.num_in_stock -= 1
        stock.save()

    rec.step(src, "stockrecord.save() full row", full_save)

    def save_update_fields():
        stock.num_in_stock -= 1
        stock.save(update_fields=["num_in_stock"])

    rec.step(src, "stockrecord.save(update_fields=[num_in_stock])", save_update_fields)

    # The lock.
    def locked():
        with transaction.atomic():
            s = StockRecord.objects.select_for_update().get(product_id=p1.id)
            s.num_in_stock -= 1
            s.save(update_fields=["num_in_stock"])

    rec.step(src, "select_for_update().get(product_id=...) in atomic", locked)

    # The atomic relative update with a guard.
    rec.step(src, "filter(product_id=..., num_in_stock__gte=1).update(num_in_stock=F()-1)",
             lambda: StockRecord.objects.filter(product_id=p2.id, num_in_stock__gte=1)
             .update(num_in_stock=F("num_in_stock") - 1))

    # Check then insert.
    # Inside a request's transaction (ATOMIC_REQUESTS), get_or_create's own atomic block is
    # a savepoint.
    def get_or_create_in_request():
        with transaction.atomic():
            return Voucher.objects.get_or_create(code="WINTER20", defaults={"used": False})

    rec.step(src, "Voucher.objects.get_or_create(code=...) new, in atomic", get_or_create_in_request)
    rec.step(src, "Voucher.objects.get_or_create(code=...) existing",
             lambda: Voucher.objects.get_or_create(code="SUMMER10"))

    # The insert that lost the race: the unique constraint refuses it.
    def create_duplicate():
        with transaction.atomic():
            try:
                with transaction.atomic():
                    Voucher.objects.create(code="SUMMER10")
            except IntegrityError:
                pass

    rec.step(src, "Voucher.objects.create(code=existing) in atomic, IntegrityError caught",
             create_duplicate)

    # Redeem: the check (used = false) was a separate read.
    rec.step(src, "Voucher.objects.filter(code=...).update(used=True)",
             lambda: Voucher.objects.filter(code="SUMMER10").update(used=True))

    # A delete of one instance (the collector deletes by primary key).
    winter = Voucher.objects.get(code="WINTER20")
    rec.step(src, "voucher.delete()", winter.delete)

    rec.step(src, "Basket.objects.bulk_create(3 rows)",
             lambda: Basket.objects.bulk_create(
                 [Basket(owner_email=f"u{i}@example.com") for i in range(3)]))

    # Joins.
    rec.step(src, "StockRecord.objects.select_related(product).get(pk=...)",
             lambda: StockRecord.objects.select_related("product").get(pk=stock.pk))
    rec.step(src, "StockRecord.objects.select_related(product).get(product__upc=...)",
             lambda: StockRecord.objects.select_related("product").get(product__upc="9780000000002"))

    # Check that nothing exists, then create it.
    def exists_then_create():
        if not Basket.objects.filter(owner_email="new@example.com", status="Open").exists():
            Basket.objects.create(owner_email="new@example.com")

    rec.step(src, "Basket.objects.filter(owner_email=..., status=Open).exists() then create()",
             exists_then_create)

    # The queryset delete (no collector when nothing cascades into it).
    rec.step(src, "Basket.objects.filter(status=...).delete()",
             lambda: Basket.objects.filter(status="Closed").delete())

    connection.close()


def run_sqlalchemy(rec: Recorder, url: str) -> None:
    from sqlalchemy import (
        ForeignKey,
        Integer,
        Numeric,
        String,
        create_engine,
        delete,
        select,
        update,
    )
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

    class Base(DeclarativeBase):
        pass

    class Account(Base):
        __tablename__ = "accounts"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        owner: Mapped[str] = mapped_column(String(100))
        balance: Mapped[Decimal] = mapped_column(Numeric(12, 2))

    class Item(Base):
        __tablename__ = "items"
        __table_args__ = {"schema": "shop"}
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        sku: Mapped[str] = mapped_column(String(64), unique=True)
        qty: Mapped[int] = mapped_column(Integer)
        version_id: Mapped[int] = mapped_column(Integer, nullable=False)
        __mapper_args__ = {"version_id_col": version_id}

    class User(Base):
        __tablename__ = "users"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        email: Mapped[str] = mapped_column(String(200), unique=True)

    class Hold(Base):
        __tablename__ = "holds"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
        amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))

    sa_url = database_url(url, DATABASE).replace("postgres://", "postgresql+psycopg://", 1)
    engine = create_engine(sa_url)
    src = "sqlalchemy"

    rec.step(src, "engine.connect() first connection", lambda: engine.connect().close(),
             may_send_nothing=True)

    def create_tables():
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS shop")
        Base.metadata.create_all(engine)
        with Session(engine) as s:
            s.add_all([
                Account(id=1, owner="alice", balance=Decimal("100.00")),
                Account(id=2, owner="bob", balance=Decimal("50.00")),
                Item(id=1, sku="KETTLE", qty=5),
                User(id=1, email="a@example.com"),
                Hold(id=1, account_id=1, amount=Decimal("5.00")),
            ])
            s.commit()

    rec.unrecorded(create_tables)

    # Read, modify the attribute, commit: the unit of work's UPDATE by primary key.
    def get_modify_commit():
        with Session(engine) as s:
            a = s.get(Account, 1)
            a.balance = a.balance - Decimal("10.00")
            s.commit()

    rec.step(src, "session.get(Account, 1) then balance -= 10, commit", get_modify_commit)

    def select_modify_commit():
        with Session(engine) as s:
            a = s.execute(select(Account).where(Account.owner == "bob")).scalar_one()
            a.balance = a.balance + Decimal("10.00")
            s.commit()

    rec.step(src, "select(Account).where(owner == ...) then balance += 10, commit",
             select_modify_commit)

    def for_update():
        with Session(engine) as s:
            a = s.execute(select(Account).where(Account.id == 2).with_for_update()).scalar_one()
            a.balance = a.balance - Decimal("1.00")
            s.commit()

    rec.step(src, "select(Account).where(id == ...).with_for_update() then commit", for_update)

    def versioned():
        with Session(engine) as s:
            item = s.execute(select(Item).where(Item.sku == "KETTLE")).scalar_one()
            item.qty = item.qty - 1
            s.commit()

    rec.step(src, "version_id_col: select(Item).where(sku == ...) then qty -= 1, commit",
             versioned)

    def on_conflict():
        with Session(engine) as s:
            s.execute(pg_insert(User).values(email="a@example.com").on_conflict_do_nothing(
                index_elements=["email"]))
            s.commit()

    rec.step(src, "insert(User).values(email=...).on_conflict_do_nothing()", on_conflict)

    def core_guarded():
        with engine.begin() as conn:
            conn.execute(update(Item).where(Item.sku == "KETTLE", Item.qty >= 2)
                         .values(qty=Item.qty - 2))

    rec.step(src, "core update(Item).where(sku == ..., qty >= 2).values(qty=qty - 2)",
             core_guarded)

    def orm_delete():
        with Session(engine) as s:
            h = s.get(Hold, 1)
            s.delete(h)
            s.commit()

    rec.step(src, "session.delete(session.get(Hold, 1)), commit", orm_delete)

    def core_delete():
        with engine.begin() as conn:
            conn.execute(delete(User).where(User.email == "a@example.com"))

    rec.step(src, "core delete(User).where(email == ...)", core_delete)

    engine.dispose()


def run_psycopg(rec: Recorder, url: str, suffix: str = "") -> None:
    import psycopg

    src = "psycopg"
    conn = rec.step(src, "psycopg.connect()" + suffix,
                    lambda: psycopg.connect(database_url(url, DATABASE)), may_send_nothing=True)

    def create_tables():
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS wallets"
                        " (id integer PRIMARY KEY, balance numeric(12, 2) NOT NULL)")
            cur.execute("CREATE TABLE IF NOT EXISTS seats"
                        " (seat text PRIMARY KEY, holder text NOT NULL)")
            cur.execute("INSERT INTO wallets VALUES (1, 100), (2, 20) ON CONFLICT DO NOTHING")
        conn.commit()

    rec.unrecorded(create_tables)

    def transfer(amount):
        def run():
            with conn.cursor() as cur:
                cur.execute("SELECT balance FROM wallets WHERE id = %s", (1,))
                (src_balance,) = cur.fetchone()
                cur.execute("SELECT balance FROM wallets WHERE id = %s", (2,))
                (dst_balance,) = cur.fetchone()
                if src_balance >= amount:
                    cur.execute("UPDATE wallets SET balance = %s WHERE id = %s",
                                (src_balance - amount, 1))
                    cur.execute("UPDATE wallets SET balance = %s WHERE id = %s",
                                (dst_balance + amount, 2))
            conn.commit()
        return run

    rec.step(src, "transfer: read both balances, two UPDATEs" + suffix, transfer(Decimal("7.50")))

    def claim():
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO seats (seat, holder) SELECT %s, %s"
                " WHERE NOT EXISTS (SELECT 1 FROM seats WHERE seat = %s)",
                ("12A", "alice", "12A"),
            )
        conn.commit()

    rec.step(src, "INSERT ... SELECT ... WHERE NOT EXISTS" + suffix, claim)

    def debit():
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE wallets SET balance = balance - %(amount)s"
                " WHERE id = %(id)s AND balance >= %(amount)s",
                {"amount": Decimal("2.25"), "id": 1},
            )
        conn.commit()

    rec.step(src, "guarded debit with named parameters" + suffix, debit)
    conn.close()


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    url = sys.argv[1]
    if os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN") == "database":
        # The child: the psycopg part under the current conventions.
        rec = Recorder()
        run_psycopg(rec, url, " (semconv database)")
        rec.write(sys.stdout)
        return
    create_database(url)
    rec = Recorder()
    run_django(rec, url)
    run_sqlalchemy(rec, url)
    run_psycopg(rec, url)
    rec.write(sys.stdout)
    sys.stdout.flush()
    child = subprocess.run(
        [sys.executable, __file__, url],
        env={**os.environ, "OTEL_SEMCONV_STABILITY_OPT_IN": "database"},
        check=True,
        capture_output=True,
        text=True,
    )
    sys.stdout.write(child.stdout)


if __name__ == "__main__":
    main()
