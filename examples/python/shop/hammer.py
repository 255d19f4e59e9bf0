"""Load for the shop (app.py) that makes its races happen, and the ground truth of which did.

The load goes in rounds. Each round picks one endpoint and sends --threads requests to it at
the same moment (the threads meet at a barrier), with contention built in: a few hot items,
each voucher code tried by 2-3 clients, each new e-mail signed up by 2 clients, transfers
among few accounts in both directions. The plain endpoints and their `_safe` twins use
separate rows (items 1-2 / 3-4, vouchers v1-v100 / v101-v200, accounts 1-5 / 6-10) so that
each side's totals can be checked on their own.

Every request carries a W3C `traceparent` with a trace id of its own, so the app's server
span and database spans carry it. Afterwards the database says which requests raced: the
app's responses name the transaction (txid) of each write, and triggers recorded the version
each UPDATE replaced; a write that replaced a version other than the one its request read
lost an update. The plan (endpoints, parameters, trace ids) is fixed by --seed.

    python hammer.py --url http://127.0.0.1:8000 --dsn postgres://... --seconds 10 \\
        --threads 8 --out record.json [--only buy,signup] [--seed 1]
"""

import argparse
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict

import psycopg

# Endpoint name -> Flask route, as the server span's http.route names it.
ROUTES = {
    "buy": "/buy/<int:item_id>",
    "buy_safe": "/buy_safe/<int:item_id>",
    "redeem": "/redeem/<code>",
    "redeem_safe": "/redeem_safe/<code>",
    "signup": "/signup",
    "signup_safe": "/signup_safe",
    "transfer": "/transfer",
    "transfer_safe": "/transfer_safe",
}
ITEMS = {"buy": [1, 2], "buy_safe": [3, 4]}
VOUCHERS = {"redeem": range(1, 101), "redeem_safe": range(101, 201)}
ACCOUNTS = {"transfer": [1, 2, 3, 4, 5], "transfer_safe": [6, 7, 8, 9, 10]}
SEEDED_STOCK, SEEDED_BALANCE = 1000, 1000


class Planner:
    """Draws each round's requests from one seeded generator."""

    # Endpoint name -> route; another shop's planner (../orm_shop/hammer.py) names its own.
    routes = ROUTES

    def __init__(self, seed, threads, endpoints):
        self.rng = random.Random(seed)
        self.threads = threads
        self.endpoints = endpoints
        self.codes = {name: [f"v{i}" for i in VOUCHERS[name]] for name in VOUCHERS}
        self.signups = 0

    def groups(self):
        """Split the threads into groups of 2 or 3 (a lone thread joins the last group)."""
        sizes, left = [], self.threads
        while left >= 2:
            size = 3 if left >= 5 and self.rng.random() < 0.5 else 2
            sizes.append(size)
            left -= size
        if left and sizes:
            sizes[-1] += left
        return sizes or [self.threads]

    def round(self):
        live = [e for e in self.endpoints if not e.startswith("redeem") or self.codes[e]]
        name = self.rng.choice(live)
        plan = []
        if name.startswith("buy"):
            for _ in range(self.threads):
                item = self.rng.choice(ITEMS[name])
                plan.append((f"/{name}/{item}", {"item_id": item, "qty": self.rng.randint(1, 3)}))
        elif name.startswith("redeem"):
            for size in self.groups():
                if not self.codes[name]:
                    break
                code = self.codes[name].pop(0)
                plan += [(f"/{name}/{code}", {"code": code})] * size
        elif name.startswith("signup"):
            for size in self.groups():
                self.signups += 1
                email = f"user{self.signups}@example.com"
                plan += [(f"/{name}", {"email": email})] * size
        else:
            for _ in range(self.threads):
                src, dst = self.rng.sample(ACCOUNTS[name], 2)
                plan.append((f"/{name}", {"src": src, "dst": dst,
                                          "amount": self.rng.randint(1, 50)}))
        self.rng.shuffle(plan)  # which thread fires which request
        return [self.request(name, path, params) for path, params in plan]

    def request(self, name, path, params):
        trace_id = f"{self.rng.getrandbits(128) or 1:032x}"
        span_id = f"{self.rng.getrandbits(64) or 1:016x}"
        return {"endpoint": name, "route": self.routes[name], "path": path, "params": params,
                "trace_id": trace_id, "traceparent": f"00-{trace_id}-{span_id}-01"}


def send(base, req):
    query = {k: v for k, v in req["params"].items() if k not in ("item_id", "code")}
    url = base + req["path"] + ("?" + urllib.parse.urlencode(query) if query else "")
    http = urllib.request.Request(url, method="POST", data=b"",
                                  headers={"traceparent": req["traceparent"]})
    try:
        with urllib.request.urlopen(http, timeout=60) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except OSError as e:
        status, body = 0, json.dumps({"error": str(e)}).encode()
    req["status"] = status
    try:
        req["response"] = json.loads(body)
    except ValueError:
        req["response"] = {"raw": body.decode(errors="replace")[:200]}


def hammer(args, endpoints, planner_class=Planner):
    planner = planner_class(args.seed, args.threads, endpoints)
    slots = [None] * args.threads
    barrier = threading.Barrier(args.threads + 1)
    stop = threading.Event()

    def worker(i):
        while True:
            barrier.wait()  # the round is planned: fire together
            if stop.is_set():
                return
            if slots[i] is not None:
                # Several instances: each thread its own, as a load balancer would spread them.
                send(args.urls[i % len(args.urls)], slots[i])
            barrier.wait()  # everyone is done

    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(args.threads)]
    for t in threads:
        t.start()
    done, rounds = [], 0
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline and (args.rounds == 0 or rounds < args.rounds):
        plan = planner.round()
        slots[:] = plan + [None] * (args.threads - len(plan))
        barrier.wait()
        barrier.wait()
        done += plan
        rounds += 1
    stop.set()
    barrier.wait()
    for t in threads:
        t.join()
    return done, rounds


def by_txid(requests):
    """The answered requests by the transaction their response names, and a trace lookup:
    a txid's trace id, None for a write whose response never arrived."""
    answered = {}
    for r in requests:
        txid = r.get("response", {}).get("txid")
        if r["status"] == 200 and txid is not None:
            answered[txid] = r

    def trace_of(txid):
        return answered[txid]["trace_id"] if txid in answered else None

    return answered, trace_of


def truth(dsn, requests):
    """What the database says happened, tied back to the requests by their txid."""
    answered, trace_of = by_txid(requests)

    t = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        # A purchase lost an update when its UPDATE replaced another version than it read.
        rows = conn.execute(
            "SELECT o.txid, o.item_id, o.read_version, h.old_version FROM orders o "
            "JOIN item_history h ON h.txid = o.txid AND h.item_id = o.item_id "
            "WHERE h.old_version <> o.read_version AND o.item_id = ANY(%s) ORDER BY o.id",
            (ITEMS["buy"],)).fetchall()
        t["lost_buys"] = [{"trace_id": trace_of(x), "txid": x, "item_id": i,
                           "read_version": rv, "replaced_version": ov} for x, i, rv, ov in rows]

        codes = [f"v{i}" for i in VOUCHERS["redeem"]]
        rows = conn.execute(
            "SELECT code, array_agg(txid ORDER BY id) FROM redemptions WHERE code = ANY(%s) "
            "GROUP BY code HAVING count(*) > 1 ORDER BY min(id)", (codes,)).fetchall()
        t["lost_redeems"] = [{"code": c, "k": len(xs), "trace_ids": [trace_of(x) for x in xs]}
                             for c, xs in rows]

        ok_signups = defaultdict(list)
        for r in requests:
            if r["endpoint"] == "signup" and r["status"] == 200:
                ok_signups[r["params"]["email"]].append(r["trace_id"])
        rows = conn.execute("SELECT email, count(*) FROM users GROUP BY email "
                            "HAVING count(*) > 1 ORDER BY min(id)").fetchall()
        t["duplicate_signups"] = [{"email": e, "k": k, "trace_ids": ok_signups[e]}
                                  for e, k in rows]

        # A transfer lost an update on each account whose UPDATE replaced a version other
        # than the one the request read (the app returns the versions it read).
        rows = conn.execute(
            "SELECT t.txid, t.src, t.dst, t.amount, h.account_id, h.old_version "
            "FROM transfers t JOIN account_history h ON h.txid = t.txid "
            "WHERE t.src = ANY(%s) ORDER BY t.id, h.account_id",
            (ACCOUNTS["transfer"],)).fetchall()
        lost = {}
        for txid, src, dst, amount, account, old in rows:
            read = answered.get(txid, {}).get("response", {}).get("read_versions", {})
            if read.get(str(account)) != old:
                entry = lost.setdefault(txid, {"trace_id": trace_of(txid), "txid": txid,
                                               "src": src, "dst": dst, "amount": amount,
                                               "lost": []})
                entry["lost"].append({"account": account, "read_version": read.get(str(account)),
                                      "replaced_version": old})
        t["lost_transfers"] = list(lost.values())

        # The plain side's totals, which its races break.
        t["plain"] = {
            "buy_stock_drift": stock_drift(conn, ITEMS["buy"]),
            "transfer_balance_total": balance_total(conn, ACCOUNTS["transfer"]),
            "transfer_balance_expected": SEEDED_BALANCE * len(ACCOUNTS["transfer"]),
        }

        # The safe side: none of the above may happen there.
        safe = {}
        for name in ROUTES:
            if name.endswith("_safe"):
                mine = [r for r in requests if r["endpoint"] == name]
                safe[name] = {
                    "requests": len(mine),
                    "ok": sum(r["status"] == 200 for r in mine),
                    "conflicts": sum(r["status"] == 409 for r in mine),
                    "errors": sum(r["status"] not in (200, 409) for r in mine),
                    "retries": sum(r.get("response", {}).get("retries", 0) for r in mine),
                }
        safe["buy_safe"]["lost_updates"] = conn.execute(
            "SELECT count(*) FROM orders o JOIN item_history h ON h.txid = o.txid "
            "AND h.item_id = o.item_id WHERE h.old_version <> o.read_version "
            "AND o.item_id = ANY(%s)", (ITEMS["buy_safe"],)).fetchone()[0]
        safe["buy_safe"]["stock_drift"] = stock_drift(conn, ITEMS["buy_safe"])
        safe["redeem_safe"]["redeemed_twice"] = conn.execute(
            "SELECT count(*) FROM (SELECT code FROM redemptions WHERE code = ANY(%s) "
            "GROUP BY code HAVING count(*) > 1) d",
            ([f"v{i}" for i in VOUCHERS["redeem_safe"]],)).fetchone()[0]
        safe["signup_safe"]["duplicates"] = conn.execute(
            "SELECT count(*) FROM (SELECT email FROM users_safe GROUP BY email "
            "HAVING count(*) > 1) d").fetchone()[0]
        safe["transfer_safe"]["balance_total"] = balance_total(conn, ACCOUNTS["transfer_safe"])
        safe["transfer_safe"]["balance_expected"] = SEEDED_BALANCE * len(ACCOUNTS["transfer_safe"])
        t["safe"] = safe
    return t


def stock_drift(conn, items):
    """Units sold beyond what left the shelf: stock + ordered - seeded, summed (0 when sound)."""
    return conn.execute(
        "SELECT coalesce(sum(i.stock + coalesce(o.qty, 0) - %s), 0)::bigint FROM items i "
        "LEFT JOIN (SELECT item_id, sum(qty) qty FROM orders GROUP BY item_id) o "
        "ON o.item_id = i.id WHERE i.id = ANY(%s)", (SEEDED_STOCK, items)).fetchone()[0]


def balance_total(conn, accounts):
    return conn.execute("SELECT sum(balance) FROM accounts WHERE id = ANY(%s)",
                        (accounts,)).fetchone()[0]


def summary(t):
    """The truth's line of the printed summary."""
    return (f"lost_buys={len(t['lost_buys'])} lost_redeems={len(t['lost_redeems'])} "
            f"duplicate_signups={len(t['duplicate_signups'])} "
            f"lost_transfers={len(t['lost_transfers'])} plain={t['plain']}")


def main(description=__doc__, routes=ROUTES, planner_class=Planner, truth_of=truth,
         summary_of=summary):
    """The command line; another shop's hammer passes its routes, planner and truth."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--url", required=True,
                        help="the shop, e.g. http://127.0.0.1:8000; several instances of it "
                             "(each its own process) comma-separated")
    parser.add_argument("--dsn", required=True, help="the shop's database, for the truth")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=0, help="stop after this many (0: no limit)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated endpoints (default: all)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    args.urls = [u.rstrip("/") for u in args.url.split(",") if u]
    if args.threads < 2:
        parser.error("--threads must be at least 2: races need company")
    endpoints = [e for e in args.only.split(",") if e] or list(routes)
    unknown = set(endpoints) - set(routes)
    if unknown:
        parser.error(f"unknown endpoints: {', '.join(sorted(unknown))}")

    requests, rounds = hammer(args, endpoints, planner_class)
    # Have each instance export its spans now rather than on its next batch.
    flushed = all(urllib.request.urlopen(urllib.request.Request(
        url + "/flush", method="POST", data=b""), timeout=60).status == 200
        for url in args.urls)
    t = truth_of(args.dsn, requests)
    with open(args.out, "w") as f:
        json.dump({"seed": args.seed, "threads": args.threads, "rounds": rounds,
                   "flushed": flushed, "requests": requests, "truth": t}, f, indent=1)

    status = defaultdict(lambda: defaultdict(int))
    for r in requests:
        status[r["endpoint"]][r["status"]] += 1
    print(f"hammer: {len(requests)} requests in {rounds} rounds", file=sys.stderr)
    for name in routes:
        if name in status:
            print(f"  {name:14} " + " ".join(f"{s}:{n}" for s, n in sorted(status[name].items())),
                  file=sys.stderr)
    print(f"  {summary_of(t)}", file=sys.stderr)
    for name, s in t["safe"].items():
        print(f"  {name:14} {s}", file=sys.stderr)


if __name__ == "__main__":
    main()
