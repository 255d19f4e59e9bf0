"""Runs SQL files and statements on the embedded current ClickHouse engine (chdb).

Called by scripts/chdb. Statements are split the way toctou splits its migrations: lines
that start with `--` are comments, and a `;` ends a statement. Each statement's first
lines are printed with its result, so a failure names the statement the engine refused.
"""

import argparse
import shutil
import sys
import tempfile

from chdb import session as chs


def statements(sql):
    body = "\n".join(l for l in sql.splitlines() if not l.strip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--session", help="session directory kept between calls")
    parser.add_argument("items", nargs="+", help="a .sql file or one statement")
    args = parser.parse_args()
    path = args.session or tempfile.mkdtemp(prefix="toctou-chdb-")
    sess = chs.Session(path)
    try:
        for item in args.items:
            if item.endswith(".sql"):
                with open(item, encoding="utf-8") as f:
                    todo = [(item, s) for s in statements(f.read())]
            else:
                todo = [("statement", item)]
            for origin, stmt in todo:
                head = " ".join(stmt.split())[:100]
                try:
                    res = sess.query(stmt, "TabSeparated")
                except Exception as err:  # chdb raises its own RuntimeError subclasses
                    print(f"refused ({origin}): {head}\n{err}", file=sys.stderr)
                    return 1
                print(f"ok ({origin}): {head}")
                out = str(res)
                if out.strip():
                    print(out.rstrip())
    finally:
        sess.close()
        if not args.session:
            shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
