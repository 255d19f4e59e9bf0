"""Runs read queries on the embedded current ClickHouse engine (chdb) over given data.

Called by the dashboard and alert tests with the chdb venv's Python (scripts/chdb install).
Reads one JSON request on stdin:

    {"schema": ["schema/sql/0001_findings.sql", ...],     # applied in order, in database toctou
     "load": [{"table": "events", "path": "events.jsonl"}], # JSONEachRow rows, inserted as is
     "queries": ["SELECT ...", ...]}                        # each answered in JSONCompact

and writes {"results": [{"error": null | "...", "meta": [{"name", "type"}], "data": [...]}]}
to stdout. Inserting into the base tables fires the schema's materialized views, so the
rollups are made by the engine exactly as ClickHouse makes them from toctou's inserts.
"""

import json
import shutil
import sys
import tempfile

from chdb import session as chs


def statements(sql):
    # The same split as toctou's migrations and scripts/chdb_run.py.
    body = "\n".join(l for l in sql.splitlines() if not l.strip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def main():
    request = json.load(sys.stdin)
    path = tempfile.mkdtemp(prefix="toctou-chdb-queries-")
    sess = chs.Session(path)
    try:
        sess.query("CREATE DATABASE IF NOT EXISTS toctou")
        sess.query("USE toctou")
        for file in request.get("schema", []):
            with open(file, encoding="utf-8") as f:
                for stmt in statements(f.read()):
                    sess.query(stmt)
        for load in request.get("load", []):
            with open(load["path"], encoding="utf-8") as f:
                rows = f.read().strip()
            if rows:
                sess.query(f"INSERT INTO {load['table']} FORMAT JSONEachRow\n{rows}")
        results = []
        for q in request.get("queries", []):
            try:
                out = json.loads(str(sess.query(q, "JSONCompact")))
                results.append({"error": None, "meta": out["meta"], "data": out["data"]})
            except Exception as err:  # chdb raises its own RuntimeError subclasses
                results.append({"error": str(err), "meta": [], "data": []})
        json.dump({"results": results}, sys.stdout)
    finally:
        sess.close()
        shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
