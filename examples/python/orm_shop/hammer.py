"""Load for the ORM shop (app.py) that makes its races happen, and the ground truth of which did.

The machinery is ../shop/hammer.py's (rounds fired at a barrier, one W3C `traceparent` with a
fresh trace id per request, the same record format); only the plan and the truth differ. Each
round picks one endpoint and one item, and every thread hits that item at once. The plain
endpoints and their `_safe` twins use separate items: /orm/buy 1-2, /orm/buy_safe 3-4,
/orm/allocate 5, /orm/allocate_safe 6 (the last two start with little stock, so that they run
out during a run), /orm/restock products 101-102 and /orm/restock_safe 103.

The truth comes from the database: the app's responses name the transaction (txid) of each
write, and triggers recorded, per transaction, the version and the stock each UPDATE of items
replaced. A purchase whose UPDATE replaced another version than it read lost an update; an
allocation whose UPDATE replaced another stock than its check read raced (another allocation
committed between its check and its write), and it oversold when that stock was below its
quantity. A restock whose UPDATE of stock_records replaced another revision than it read
(the database counts them) lost an update.

    python hammer.py --url http://127.0.0.1:8000 --dsn postgres://... --seconds 10 \\
        --threads 8 --out record.json [--only buy,allocate] [--seed 1]
"""

import importlib.util
import os

import psycopg


def load_shop_hammer():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shop", "hammer.py")
    spec = importlib.util.spec_from_file_location("shop_hammer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shop = load_shop_hammer()

# Endpoint name -> Flask route, as the server span's http.route names it.
ROUTES = {
    "buy": "/orm/buy/<int:item_id>",
    "buy_safe": "/orm/buy_safe/<int:item_id>",
    "allocate": "/orm/allocate/<int:item_id>",
    "allocate_safe": "/orm/allocate_safe/<int:item_id>",
    "restock": "/orm/restock/<int:product_id>",
    "restock_safe": "/orm/restock_safe/<int:product_id>",
}
# Items, or for the restocks products (their stock records are 11-13).
ITEMS = {"buy": [1, 2], "buy_safe": [3, 4], "allocate": [5], "allocate_safe": [6],
         "restock": [101, 102], "restock_safe": [103]}
SEEDED_STOCK = {1: 1000, 2: 1000, 3: 1000, 4: 1000, 5: 30, 6: 30}


class Planner(shop.Planner):
    """The shop's seeded planner, with rounds of this shop's endpoints."""

    routes = ROUTES

    def round(self):
        name = self.rng.choice(self.endpoints)
        item = self.rng.choice(ITEMS[name])  # every thread on the same item
        plan = [(f"/orm/{name}/{item}", {"item_id": item, "qty": self.rng.randint(1, 3)})
                for _ in range(self.threads)]
        return [self.request(name, path, params) for path, params in plan]


def truth(dsn, requests):
    """What the database says happened, tied back to the requests by their txid."""
    _, trace_of = shop.by_txid(requests)

    def answers(name):
        mine = [r for r in requests if r["endpoint"] == name]
        return {"requests": len(mine),
                "ok": sum(r["status"] == 200 for r in mine),
                "conflicts": sum(r["status"] == 409 for r in mine),
                "errors": sum(r["status"] not in (200, 409) for r in mine)}

    def lost_updates(conn, items):
        return conn.execute(
            "SELECT o.txid, o.item_id, o.read_version, h.old_version FROM orders o "
            "JOIN item_history h ON h.txid = o.txid AND h.item_id = o.item_id "
            "WHERE h.old_version <> o.read_version AND o.item_id = ANY(%s) ORDER BY o.id",
            (items,)).fetchall()

    def raced(conn, items):
        return conn.execute(
            "SELECT a.txid, a.item_id, a.qty, a.read_stock, h.old_stock FROM allocations a "
            "JOIN stock_history h ON h.txid = a.txid AND h.item_id = a.item_id "
            "WHERE h.old_stock <> a.read_stock AND a.item_id = ANY(%s) ORDER BY a.id",
            (items,)).fetchall()

    def lost_restocks(conn, products):
        return conn.execute(
            "SELECT r.txid, r.product_id, h.record_id, r.read_qty, h.old_qty FROM restocks r "
            "JOIN stock_record_history h ON h.txid = r.txid "
            "WHERE h.old_revision <> r.read_revision AND r.product_id = ANY(%s) ORDER BY r.id",
            (products,)).fetchall()

    def final_stock(conn, item):
        return conn.execute("SELECT stock FROM items WHERE id = %s", (item,)).fetchone()[0]

    t = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        # A purchase lost an update when its UPDATE replaced another version than it read.
        t["lost_buys"] = [{"trace_id": trace_of(x), "txid": x, "item_id": i,
                           "read_version": rv, "replaced_version": ov}
                          for x, i, rv, ov in lost_updates(conn, ITEMS["buy"])]
        # An allocation raced when its UPDATE replaced another stock than its check read.
        t["raced_allocations"] = [{"trace_id": trace_of(x), "txid": x, "item_id": i, "qty": q,
                                   "read_stock": rs, "replaced_stock": os_,
                                   "oversold": os_ < q}
                                  for x, i, q, rs, os_ in raced(conn, ITEMS["allocate"])]

        # A restock lost an update when its UPDATE replaced another revision than it read.
        t["lost_restocks"] = [{"trace_id": trace_of(x), "txid": x, "product_id": p,
                               "record_id": rid, "read_qty": rq, "replaced_qty": oq}
                              for x, p, rid, rq, oq in lost_restocks(conn, ITEMS["restock"])]

        item = ITEMS["allocate"][0]
        stock = final_stock(conn, item)
        allocated = conn.execute("SELECT coalesce(sum(qty), 0)::int FROM allocations "
                                 "WHERE item_id = %s", (item,)).fetchone()[0]
        t["plain"] = {
            "buy_stock_drift": shop.stock_drift(conn, ITEMS["buy"]),
            "allocate_final_stock": stock,
            "allocated": allocated,
            "oversold": max(0, -stock),
        }

        safe = {name: answers(name) for name in ROUTES if name.endswith("_safe")}
        safe["buy_safe"]["lost_updates"] = len(lost_updates(conn, ITEMS["buy_safe"]))
        safe["buy_safe"]["stock_drift"] = shop.stock_drift(conn, ITEMS["buy_safe"])
        item = ITEMS["allocate_safe"][0]
        safe["allocate_safe"]["final_stock"] = final_stock(conn, item)
        safe["allocate_safe"]["lowest_stock"] = conn.execute(
            "SELECT least(min(new_stock), (SELECT stock FROM items WHERE id = %s)) "
            "FROM stock_history WHERE item_id = %s", (item, item)).fetchone()[0]
        # Checks that read a stale stock but whose guarded UPDATE still held: harmless.
        safe["allocate_safe"]["stale_checks"] = len(raced(conn, ITEMS["allocate_safe"]))
        safe["restock_safe"]["lost_updates"] = len(lost_restocks(conn, ITEMS["restock_safe"]))
        t["safe"] = safe
    return t


def summary(t):
    """The truth's line of the printed summary."""
    oversold = sum(a["oversold"] for a in t["raced_allocations"])
    return (f"lost_buys={len(t['lost_buys'])} lost_restocks={len(t['lost_restocks'])} "
            f"raced_allocations={len(t['raced_allocations'])} "
            f"(of which oversold={oversold}) plain={t['plain']}")


if __name__ == "__main__":
    # The shop's command line, loop and record, with this shop's plan and truth.
    shop.main(__doc__, ROUTES, Planner, truth, summary)
