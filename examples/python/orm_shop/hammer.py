"""Load for the ORM shop (app.py) that makes its races happen, and the ground truth of which did.

The machinery is ../shop/hammer.py's (rounds fired at a barrier, one W3C `traceparent` with a
fresh trace id per request, the same record format); only the plan and the truth differ. Each
round picks one endpoint and one item, and every thread hits that item at once. The plain
endpoints and their `_safe` twins use separate items: /orm/buy 1-2, /orm/buy_safe 3-4,
/orm/allocate 5, /orm/allocate_safe 6 (the last two start with little stock, so that they run
out during a run).

The truth comes from the database: the app's responses name the transaction (txid) of each
write, and triggers recorded, per transaction, the version and the stock each UPDATE of items
replaced. A purchase whose UPDATE replaced another version than it read lost an update; an
allocation whose UPDATE replaced another stock than its check read raced (another allocation
committed between its check and its write), and it oversold when that stock was below its
quantity.

    python hammer.py --url http://127.0.0.1:8000 --dsn postgres://... --seconds 10 \\
        --threads 8 --out record.json [--only buy,allocate] [--seed 1]
"""

import argparse
import importlib.util
import json
import os
import sys
import urllib.request
from collections import defaultdict

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
}
ITEMS = {"buy": [1, 2], "buy_safe": [3, 4], "allocate": [5], "allocate_safe": [6]}
SEEDED_STOCK = {1: 1000, 2: 1000, 3: 1000, 4: 1000, 5: 30, 6: 30}


class Planner(shop.Planner):
    """The shop's seeded planner, with rounds of this shop's endpoints."""

    def round(self):
        name = self.rng.choice(self.endpoints)
        item = self.rng.choice(ITEMS[name])  # every thread on the same item
        plan = [(f"/orm/{name}/{item}", {"item_id": item, "qty": self.rng.randint(1, 3)})
                for _ in range(self.threads)]
        return [self.request(name, path, params) for path, params in plan]

    def request(self, name, path, params):
        trace_id = f"{self.rng.getrandbits(128) or 1:032x}"
        span_id = f"{self.rng.getrandbits(64) or 1:016x}"
        return {"endpoint": name, "route": ROUTES[name], "path": path, "params": params,
                "trace_id": trace_id, "traceparent": f"00-{trace_id}-{span_id}-01"}


def hammer(args, endpoints):
    # The shop's loop (threads, barrier, send) builds its planner by this module-level name.
    shop.Planner = Planner
    return shop.hammer(args, endpoints)


def truth(dsn, requests):
    """What the database says happened, tied back to the requests by their txid."""
    by_txid = {}
    for r in requests:
        txid = r.get("response", {}).get("txid")
        if r["status"] == 200 and txid is not None:
            by_txid[txid] = r

    def trace_of(txid):  # None: a write whose response never arrived
        return by_txid[txid]["trace_id"] if txid in by_txid else None

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
        t["safe"] = safe
    return t


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the shop, e.g. http://127.0.0.1:8000")
    parser.add_argument("--dsn", required=True, help="the shop's database, for the truth")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=0, help="stop after this many (0: no limit)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated endpoints (default: all)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    args.url = args.url.rstrip("/")
    if args.threads < 2:
        parser.error("--threads must be at least 2: races need company")
    endpoints = [e for e in args.only.split(",") if e] or list(ROUTES)
    unknown = set(endpoints) - set(ROUTES)
    if unknown:
        parser.error(f"unknown endpoints: {', '.join(sorted(unknown))}")

    requests, rounds = hammer(args, endpoints)
    # Have the app export its spans now rather than on its next batch.
    flushed = urllib.request.urlopen(urllib.request.Request(
        args.url + "/flush", method="POST", data=b""), timeout=60).status == 200
    t = truth(args.dsn, requests)
    with open(args.out, "w") as f:
        json.dump({"seed": args.seed, "threads": args.threads, "rounds": rounds,
                   "flushed": flushed, "requests": requests, "truth": t}, f, indent=1)

    status = defaultdict(lambda: defaultdict(int))
    for r in requests:
        status[r["endpoint"]][r["status"]] += 1
    print(f"hammer: {len(requests)} requests in {rounds} rounds", file=sys.stderr)
    for name in ROUTES:
        if name in status:
            print(f"  {name:14} " + " ".join(f"{s}:{n}" for s, n in sorted(status[name].items())),
                  file=sys.stderr)
    oversold = sum(a["oversold"] for a in t["raced_allocations"])
    print(f"  lost_buys={len(t['lost_buys'])} raced_allocations={len(t['raced_allocations'])} "
          f"(of which oversold={oversold}) plain={t['plain']}", file=sys.stderr)
    for name, s in t["safe"].items():
        print(f"  {name:14} {s}", file=sys.stderr)


if __name__ == "__main__":
    main()
