"""Checks Grafana files against Grafana's published schema, as generated into the
grafana-foundation-sdk package (PyPI; its models are generated from Grafana's own schemas).

    python scripts/grafana_schema.py dashboard FILE.json...
    python scripts/grafana_schema.py rules FILE.yaml...           (alerting file provisioning)
    python scripts/grafana_schema.py contact-points FILE.yaml...

The SDK's `from_json` reads only the fields its schema defines; `to_json` writes them back.
A field that does not survive the round trip is not part of Grafana's model for that kind
(a misspelt key, a field at the wrong level, a value of the wrong shape), and is reported.
The panel plugins' options and field configs are checked through the SDK's registry of core
panel types. Exits 1 when anything is reported.
"""

import json
import sys

import yaml
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.models import alerting
from grafana_foundation_sdk.models.dashboard import Dashboard


def plain(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.to_json() if hasattr(o, "to_json") else str(o)))


def lost(original, back, path=""):
    """Paths of `original` that are missing or changed in `back`."""
    if isinstance(original, dict):
        if not isinstance(back, dict):
            return [f"{path}: became {type(back).__name__}"]
        out = []
        for key, value in original.items():
            if key not in back:
                out.append(f"{path}.{key}: not in Grafana's schema")
            else:
                out += lost(value, back[key], f"{path}.{key}")
        return out
    if isinstance(original, list):
        if not isinstance(back, list) or len(original) != len(back):
            return [f"{path}: list not kept"]
        out = []
        for i, (a, b) in enumerate(zip(original, back)):
            out += lost(a, b, f"{path}[{i}]")
        return out
    if original != back:
        return [f"{path}: {original!r} read back as {back!r}"]
    return []


def main():
    kind, files = sys.argv[1], sys.argv[2:]
    plugins.register_default_plugins()
    problems = []
    for file in files:
        with open(file, encoding="utf-8") as f:
            doc = json.load(f) if file.endswith(".json") else yaml.safe_load(f)
        if kind == "dashboard":
            items = [("", doc, Dashboard)]
        elif kind == "rules":
            items = [
                (f".groups[{g}].rules[{r}]", rule, alerting.Rule)
                for g, group in enumerate(doc["groups"])
                for r, rule in enumerate(group["rules"])
            ]
        elif kind == "contact-points":
            items = [
                (f".contactPoints[{c}].receivers[{r}]", rcv, alerting.ContactPoint)
                for c, cp in enumerate(doc["contactPoints"])
                for r, rcv in enumerate(cp["receivers"])
            ]
        else:
            print(f"unknown kind {kind}", file=sys.stderr)
            return 2
        for at, item, model in items:
            back = plain(model.from_json(item).to_json())
            problems += [f"{file}{at}{p}" for p in lost(item, back)]
        print(f"checked {file}: {len(items)} {kind} item(s)")
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
