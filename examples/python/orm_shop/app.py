"""The shop's stock endpoints written with SQLAlchemy's ORM, over psycopg 3 and PostgreSQL.

Nothing here knows about toctou: the statements are the ones SQLAlchemy generates, and the
only tracing is OpenTelemetry's auto-instrumentation of Flask (a server span per request,
joining the caller's W3C `traceparent`) and psycopg (a span per statement, with its
parameters unless --no-params), set up exactly as in ../shop/app.py. SQLAlchemy's own
instrumentation is not used: psycopg's spans carry the statements as sent.

    POST /orm/buy/<id>?qty=N          session.get, think, check, `item.stock -= qty`, commit:
                                      a full-row save of what was read (lost update)
    POST /orm/buy_safe/<id>?qty=N     the same on a mapping with version_id_col: the UPDATE
                                      carries `AND items.version = ...`; StaleDataError -> 409
    POST /orm/allocate/<id>?qty=N     check the stock in one transaction, then in another an
                                      unguarded `stock = stock - qty` (oversells)
    POST /orm/allocate_safe/<id>?qty=N  the same check, then `... WHERE stock >= qty`;
                                      no row updated -> 409
    POST /orm/restock/<product>?qty=N the product's stock record read by its product id (not
                                      its key), think, `record.qty += qty`, commit: saved by
                                      its key (lost update)
    POST /orm/restock_safe/<product>?qty=N  the same read `FOR UPDATE`

    python app.py --dsn postgres://... --setup           # (re)create the tables, then exit
    python app.py --dsn postgres://... --port 8000       # serve
"""

import importlib.util
import os
import random
import sys
import time

import psycopg
from flask import Flask, jsonify, request
from opentelemetry import trace
from sqlalchemy import create_engine, func, insert, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

# What this shop adds to ../shop/app.py's schema (which it runs first): the stock each UPDATE
# of items replaced, and the stock each allocation's check read, both by transaction.
SCHEMA = """
DROP TABLE IF EXISTS allocations, stock_history, stock_records, restocks,
    stock_record_history CASCADE;
DROP FUNCTION IF EXISTS record_item_stock() CASCADE;
DROP FUNCTION IF EXISTS record_stock_record_qty() CASCADE;
DROP FUNCTION IF EXISTS count_stock_record_revision() CASCADE;

CREATE TABLE allocations (id serial PRIMARY KEY, item_id int, qty int, read_stock int,
    txid bigint);
CREATE TABLE stock_history (id serial PRIMARY KEY, item_id int, old_stock int, new_stock int,
    txid bigint);

CREATE FUNCTION record_item_stock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO stock_history (item_id, old_stock, new_stock, txid)
    VALUES (OLD.id, OLD.stock, NEW.stock, txid_current());
  RETURN NEW;
END $$;
CREATE TRIGGER items_stock_history AFTER UPDATE ON items
  FOR EACH ROW EXECUTE FUNCTION record_item_stock();

-- Items 5 (allocate) and 6 (allocate_safe) start with little stock so that they run out
-- during a run. Replaced rather than updated: no history row for the setup itself.
DELETE FROM items WHERE id IN (5, 6);
INSERT INTO items (id, stock, version) VALUES (5, 30, 1), (6, 30, 1);

-- Stock records, found by their product (an ORM's usual lookup), saved by their key. A lost
-- restock leaves a quantity another restock may leave too (it goes down as well as up), so
-- the truth is a revision the database counts on every UPDATE (not a version toctou reads:
-- the application never writes it): the one each restock read, and the one each UPDATE
-- replaced, by transaction.
CREATE TABLE stock_records (id serial PRIMARY KEY, product_id int UNIQUE, qty int,
    revision int NOT NULL DEFAULT 0);
CREATE TABLE restocks (id serial PRIMARY KEY, product_id int, qty int, read_qty int,
    read_revision int, txid bigint);
CREATE TABLE stock_record_history (id serial PRIMARY KEY, record_id int, old_qty int,
    new_qty int, old_revision int, txid bigint);
CREATE FUNCTION count_stock_record_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.revision := OLD.revision + 1;
  RETURN NEW;
END $$;
CREATE TRIGGER stock_records_revision BEFORE UPDATE ON stock_records
  FOR EACH ROW EXECUTE FUNCTION count_stock_record_revision();
CREATE FUNCTION record_stock_record_qty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO stock_record_history (record_id, old_qty, new_qty, old_revision, txid)
    VALUES (OLD.id, OLD.qty, NEW.qty, OLD.revision, txid_current());
  RETURN NEW;
END $$;
CREATE TRIGGER stock_records_qty_history AFTER UPDATE ON stock_records
  FOR EACH ROW EXECUTE FUNCTION record_stock_record_qty();
-- Ids far from the product ids: a read by product cannot be taken for a read by key.
INSERT INTO stock_records (id, product_id, qty) VALUES (11, 101, 0), (12, 102, 0), (13, 103, 0);
"""
ALLOCATION_STOCK = 30


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    stock: Mapped[int]
    version: Mapped[int]


class VersionedItem(Base):
    """The same table, with `version` as SQLAlchemy's optimistic-concurrency counter."""

    __table__ = Item.__table__
    __mapper_args__ = {"version_id_col": Item.__table__.c.version}


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int]
    qty: Mapped[int]
    read_version: Mapped[int]
    txid: Mapped[int]


class Allocation(Base):
    __tablename__ = "allocations"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int]
    qty: Mapped[int]
    read_stock: Mapped[int]
    txid: Mapped[int]


class StockRecord(Base):
    __tablename__ = "stock_records"
    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[int]
    qty: Mapped[int]
    revision: Mapped[int]


class Restock(Base):
    __tablename__ = "restocks"
    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[int]
    qty: Mapped[int]
    read_qty: Mapped[int]
    read_revision: Mapped[int]
    txid: Mapped[int]


app = Flask(__name__)
THINK_MS = 5.0
Session = sessionmaker()


def load_shop_app():
    """../shop/app.py: its schema, command line and serving are this shop's too."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shop", "app.py")
    spec = importlib.util.spec_from_file_location("shop_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shop = load_shop_app()


def think():
    """A little work between the check and the act, as real code has; it widens the window."""
    time.sleep(random.uniform(0, THINK_MS) / 1000)


def refused(reason, **read):
    return jsonify(ok=False, reason=reason, **read), 409


@app.errorhandler(Exception)
def error(e):
    if isinstance(e, HTTPException):  # 404, 405, a missing argument: Flask's own answer
        return e
    return jsonify(ok=False, error=f"{type(e).__name__}: {e}"), 500


def buy(model, item_id):
    qty = int(request.args.get("qty", 1))
    with Session() as session:
        item = session.get(model, item_id)
        if item is None:
            return refused("no such item")
        read_stock, read_version = item.stock, item.version
        think()
        if item.stock < qty:
            return refused("out of stock", read_stock=read_stock, read_version=read_version)
        item.stock -= qty
        if model is Item:
            item.version += 1  # by hand; VersionedItem's mapper bumps it itself
        try:
            session.flush()  # UPDATE items SET stock=..., version=... WHERE items.id = ...
        except StaleDataError:
            # Another buyer's UPDATE bumped the version between our read and our write.
            session.rollback()
            return refused("bought concurrently", read_stock=read_stock,
                           read_version=read_version)
        txid = session.scalar(insert(Order).values(
            item_id=item_id, qty=qty, read_version=read_version, txid=func.txid_current(),
        ).returning(Order.txid))
        session.commit()
    return jsonify(ok=True, txid=txid, read_stock=read_stock, read_version=read_version,
                   stock=read_stock - qty)


@app.post("/orm/buy/<int:item_id>")
def buy_plain(item_id):
    return buy(Item, item_id)


@app.post("/orm/buy_safe/<int:item_id>")
def buy_safe(item_id):
    return buy(VersionedItem, item_id)


def allocate(item_id, guarded):
    qty = int(request.args.get("qty", 1))
    # The check, in a transaction of its own that ends before the act begins.
    with Session() as session:
        item = session.get(Item, item_id)
        if item is None:
            return refused("no such item")
        read_stock = item.stock
        session.commit()
    think()
    if read_stock < qty:
        return refused("out of stock", read_stock=read_stock)
    # The act: a relative decrement, atomic in itself, computed by the database.
    with Session() as session:
        where = [Item.id == item_id]
        if guarded:
            where.append(Item.stock >= qty)  # the check again, inside the write
        done = session.execute(update(Item).where(*where).values(stock=Item.stock - qty))
        if done.rowcount == 0:
            session.rollback()
            return refused("out of stock concurrently", read_stock=read_stock)
        txid = session.scalar(insert(Allocation).values(
            item_id=item_id, qty=qty, read_stock=read_stock, txid=func.txid_current(),
        ).returning(Allocation.txid))
        session.commit()
    return jsonify(ok=True, txid=txid, read_stock=read_stock)


@app.post("/orm/allocate/<int:item_id>")
def allocate_plain(item_id):
    return allocate(item_id, guarded=False)


@app.post("/orm/allocate_safe/<int:item_id>")
def allocate_safe(item_id):
    return allocate(item_id, guarded=True)


def restock(product_id, locked):
    qty = int(request.args.get("qty", 1))
    with Session() as session:
        # SELECT ... FROM stock_records WHERE stock_records.product_id = ... [FOR UPDATE]
        query = select(StockRecord).where(StockRecord.product_id == product_id)
        if locked:
            query = query.with_for_update()
        record = session.scalars(query).one_or_none()
        if record is None:
            return refused("no such product")
        read_qty, read_revision = record.qty, record.revision
        think()
        record.qty += qty
        session.flush()  # UPDATE stock_records SET qty=... WHERE stock_records.id = ...
        txid = session.scalar(insert(Restock).values(
            product_id=product_id, qty=qty, read_qty=read_qty, read_revision=read_revision,
            txid=func.txid_current(),
        ).returning(Restock.txid))
        session.commit()
    return jsonify(ok=True, txid=txid, read_qty=read_qty)


@app.post("/orm/restock/<int:product_id>")
def restock_plain(product_id):
    return restock(product_id, locked=False)


@app.post("/orm/restock_safe/<int:product_id>")
def restock_safe(product_id):
    return restock(product_id, locked=True)


@app.post("/flush")
def flush():
    # Lets a caller wait until every span so far has been exported.
    return jsonify(ok=trace.get_tracer_provider().force_flush())


def sqlalchemy_url(dsn):
    """postgres://... or postgresql://... as SQLAlchemy's psycopg 3 URL."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix):]
    raise SystemExit(f"--dsn: not a PostgreSQL URL: {dsn}")


def setup(dsn):
    # ../shop/app.py's schema first (items, orders, item_history and its trigger), then ours.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(shop.SCHEMA)
        conn.execute(SCHEMA)


def main():
    global THINK_MS
    args = shop.arguments(__doc__)
    THINK_MS = args.think_ms

    if args.setup:
        # Before any instrumentation: setting up is not part of the traced workload.
        setup(args.dsn)
        print("orm-shop: schema created", file=sys.stderr)
        return

    # The pool is large enough that no request waits for a connection; the first connection
    # (where SQLAlchemy asks the server its version, schema, isolation level...) is made and
    # dropped here, before tracing starts, so that no request's trace carries those queries.
    engine = create_engine(sqlalchemy_url(args.dsn), pool_size=20, max_overflow=20)
    engine.connect().close()
    engine.dispose()
    Session.configure(bind=engine)

    shop.serve(app, "orm-shop", args)


if __name__ == "__main__":
    main()
