"""Side-by-side benchmark of issue 7: toctou (no sink, ClickHouse sink), Rotel (blackhole)
and the OpenTelemetry Collector (nop) fed the same `toctou loadgen` input in one run.

scripts/bench-peers builds and installs everything and calls this with the paths; this file
owns the measuring: servers pinned to one CPU and the generator to the other (taskset),
CPU time from /proc/<pid>/stat, RSS from /proc/<pid>/status, detection latency from
toctou's findings (file, and ClickHouse polled for the row's first visibility).
Results go to a JSON file; the chart is drawn by bench/peers/chart.py.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpuinfo(key):
    """The first value of `key` in /proc/cpuinfo ("" when absent)."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    return ""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat; after the ")" split, index 11 and 12.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def wait_port(port, proc, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench: {what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"bench: {what} did not listen on {port}")


def quantiles(values, qs):
    if not values:
        return {f"p{int(q * 100)}": None for q in qs}
    v = sorted(values)
    out = {}
    for q in qs:
        i = min(len(v) - 1, max(0, int(len(v) * q + 0.999999) - 1))
        out[f"p{int(q * 100)}"] = v[i]
    return out


class Server:
    def __init__(self, name, argv, http_port, grpc_port, env=None, api_port=None, findings=None):
        self.name, self.argv, self.env = name, argv, env
        self.http_port, self.grpc_port, self.api_port = http_port, grpc_port, api_port
        self.findings = findings
        self.proc = None

    def start(self, cpu, log):
        env = dict(os.environ, **(self.env or {}))
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(cpu)] + self.argv,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env=env,
        )
        wait_port(self.http_port, self.proc, self.name)
        wait_port(self.grpc_port, self.proc, self.name)

    @property
    def pid(self):
        return self.proc.pid  # taskset execs the server: same pid

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def metric(self, name):
        if not self.api_port:
            return None
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/metrics", timeout=5).read()
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total


def loadgen(args, server, rate, seconds, warmup, cpu_probe=None):
    """Runs the generator on the load CPU; returns its report and the server's CPU
    seconds over the measured window (warm-up excluded)."""
    if args.protocol == "http":
        endpoint = f"http://127.0.0.1:{server.http_port}"
    else:
        endpoint = f"http://127.0.0.1:{server.grpc_port}"
    argv = [
        "taskset", "-c", str(args.load_cpu), args.toctou, "loadgen",
        "--endpoint", endpoint, "--protocol", args.protocol,
        "--connections", str(args.connections), "--rate", str(rate),
        "--duration", f"{seconds}s", "--warmup", f"{warmup}s",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    time.sleep(warmup)
    c0 = cpu_seconds(server.pid)
    time.sleep(seconds)
    c1 = cpu_seconds(server.pid)
    out, err = proc.communicate(timeout=120)
    if proc.returncode != 0:
        sys.exit(f"bench: loadgen failed: {err}")
    sys.stderr.write(err)
    report = json.loads(out.strip().splitlines()[-1])
    report["server_cpu_s"] = round(c1 - c0, 3)
    report["window"] = [t0 + warmup, t0 + warmup + seconds]
    return report


def per_million(cpu, report):
    spans = report["spans_accepted"]
    return round(cpu / (spans / 1e6), 3) if spans else None


def findings_latency(path, window):
    """detected_at − use time of the findings decided inside the window (ms)."""
    lat = []
    lo, hi = window[0] * 1e9, window[1] * 1e9
    with open(path) as f:
        for line in f:
            try:
                fd = json.loads(line)
            except ValueError:
                continue
            use, det = fd.get("use_time_ns"), fd.get("detected_at_ns")
            if use and det and lo <= det <= hi:
                lat.append((det - use) / 1e6)
    return lat


class ClickhousePoller(threading.Thread):
    """Polls the findings table; a row's latency is the poll that first returned it minus
    its use time (the finding visible to a query, not just decided)."""

    def __init__(self, url, interval=0.05):
        super().__init__(daemon=True)
        self.url, self.interval = url, interval
        self.cursor = int(time.time() * 1e9)
        self.samples = []  # (visible_ns, use_ns)
        self.stop_flag = threading.Event()

    def query(self, sql):
        req = urllib.request.Request(self.url + "/?" + urllib.parse.urlencode({"query": sql}))
        return urllib.request.urlopen(req, timeout=10).read().decode()

    def run(self):
        while not self.stop_flag.is_set():
            sql = (
                "SELECT detected_at_ns, use_time_ns FROM toctou.findings "
                f"WHERE detected_at_ns > {self.cursor} AND use_time_ns IS NOT NULL "
                "FORMAT TabSeparated"
            )
            rows = self.query(sql)
            now = time.time_ns()
            for line in rows.splitlines():
                det, use = line.split("\t")
                det, use = int(det), int(use)
                self.cursor = max(self.cursor, det)
                self.samples.append((now, use, det))
            time.sleep(self.interval)


def measure_fixed(args, server, work):
    """One round at the fixed rate on a freshly started server: its idle RSS, the
    generator's report and CPU seconds per million spans."""
    server.start(args.server_cpu, os.path.join(work, f"{server.name}.log"))
    try:
        time.sleep(3)
        idle = round(status_kib(server.pid, "VmRSS") / 1024, 1)
        fixed = loadgen(args, server, args.fixed_rate, args.fixed_seconds, 2)
        return {"idle_rss_mib": idle, "report": fixed, "cpu": per_million(fixed["server_cpu_s"], fixed)}
    finally:
        server.stop()


def lower_median(items, key):
    """The item with the median `key` (the lower middle of an even count); None sorts last."""
    ranked = sorted(items, key=lambda i: key(i) if key(i) is not None else float("inf"))
    return ranked[(len(ranked) - 1) // 2]


def measure(args, server, work, rounds, ch_url=None):
    """The fixed-rate rounds (already run) summarised, then on a fresh start the latency
    into ClickHouse (with `ch_url`) and the saturation run."""
    mid = lower_median(rounds, lambda r: r["cpu"])
    res = {
        "name": server.name,
        "idle_rss_mib": lower_median(rounds, lambda r: r["idle_rss_mib"])["idle_rss_mib"],
        "fixed": mid["report"],
        "cpu_s_per_m_spans_at_fixed": mid["cpu"],
        "cpu_s_per_m_spans_at_fixed_rounds": [r["cpu"] for r in rounds],
    }
    server.start(args.server_cpu, os.path.join(work, f"{server.name}.log"))
    try:
        time.sleep(3)
        if ch_url:
            poller = ClickhousePoller(ch_url)
            poller.start()
            lat = loadgen(args, server, args.latency_rate, args.latency_seconds, 3)
            time.sleep(4)  # the last findings of the window: lateness + batch age
            poller.stop_flag.set()
            poller.join()
            lo, hi = lat["window"][0] * 1e9, lat["window"][1] * 1e9
            vis = [(v - u) / 1e6 for v, u, d in poller.samples if lo <= u <= hi]
            det = [(d - u) / 1e6 for v, u, d in poller.samples if lo <= u <= hi]
            lat["clickhouse_visible_ms"] = quantiles(vis, [0.5, 0.9, 0.99, 1.0])
            lat["detected_ms"] = quantiles(det, [0.5, 0.99])
            lat["findings_measured"] = len(vis)
            res["latency_into_clickhouse"] = lat
        sat = loadgen(args, server, 0, args.sat_seconds, args.sat_warmup)
        res["saturation"] = sat
        res["spans_per_s"] = round(sat["spans_per_s"])
        res["items_per_s"] = round(sat["items_per_s"])
        res["cpu_s_per_m_spans_at_saturation"] = per_million(sat["server_cpu_s"], sat)
        res["peak_rss_mib"] = round(status_kib(server.pid, "VmHWM") / 1024, 1)
        if server.api_port:
            res["evicted_total"] = server.metric("toctou_evicted_total")
            res["findings_total"] = server.metric("toctou_findings_total")
        if server.findings:
            time.sleep(3)
            lat = findings_latency(server.findings, sat["window"])
            res["detection_ms_at_saturation"] = quantiles(lat, [0.5, 0.99])
        return res
    finally:
        server.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--toctou", required=True)
    ap.add_argument("--rotel", required=True)
    ap.add_argument("--otelcol", required=True)
    ap.add_argument("--otelcol-config", required=True)
    ap.add_argument("--clickhouse-url")
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--protocol", default="http", choices=["http", "grpc"])
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--sat-seconds", type=int, default=15)
    ap.add_argument("--sat-warmup", type=int, default=5)
    ap.add_argument("--fixed-rate", type=int, default=10000)
    ap.add_argument("--fixed-seconds", type=int, default=15)
    # At 10k spans/s each server uses 5-13% of a core and the VM's speed drifts by tens of
    # percent within minutes: the fixed rate is measured in rounds, the servers taking turns
    # in each, and the median round reported (with every round and the per-round ratios).
    ap.add_argument("--fixed-rounds", type=int, default=3)
    ap.add_argument("--latency-rate", type=int, default=100000)
    ap.add_argument("--latency-seconds", type=int, default=15)
    ap.add_argument("--only", default="toctou,toctou+clickhouse,rotel,otelcol")
    args = ap.parse_args()
    only = args.only.split(",")

    def toctou(name, extra):
        h, g, a = free_port(), free_port(), free_port()
        findings = os.path.join(args.work, f"{name}.findings.jsonl")
        argv = [
            args.toctou, "run", "--otlp-http-addr", f"127.0.0.1:{h}",
            "--otlp-grpc-addr", f"127.0.0.1:{g}", "--api-addr", f"127.0.0.1:{a}",
            "--findings-file", findings,
        ] + extra
        return Server(name, argv, h, g, api_port=a, findings=findings)

    servers = []  # (server, ClickHouse URL for the latency phase)
    if "toctou" in only:
        servers.append((toctou("toctou", []), None))
    if "toctou+clickhouse" in only and args.clickhouse_url:
        extra = [
            "--clickhouse-url", args.clickhouse_url, "--no-migrate",
            # The latency target leaves 1.5 s: the default 2 s lateness alone is more, and a
            # finding waits up to the batch age for its insert (4 inserts a second at most).
            "--allowed-lateness", "500ms", "--clickhouse-batch-age", "250ms",
        ]
        servers.append((toctou("toctou+clickhouse", extra), args.clickhouse_url))
    if "rotel" in only:
        h, g = free_port(), free_port()
        argv = [
            args.rotel, "start", "--exporter", "blackhole",
            "--otlp-http-endpoint", f"127.0.0.1:{h}", "--otlp-grpc-endpoint", f"127.0.0.1:{g}",
            "--pid-file", os.path.join(args.work, "rotel.pid"),
            "--log-file", os.path.join(args.work, "rotel-agent.log"),
        ]
        servers.append((Server("rotel", argv, h, g), None))
    if "otelcol" in only:
        h, g = free_port(), free_port()
        env = {"OTELCOL_HTTP_PORT": str(h), "OTELCOL_GRPC_PORT": str(g)}
        argv = [args.otelcol, "--config", args.otelcol_config]
        servers.append((Server("otelcol", argv, h, g, env=env), None))

    rounds = {server.name: [] for server, _ in servers}
    for r in range(args.fixed_rounds):
        # Each round starts with the next server, so none is always first after a pause.
        for server, _ in servers[r % len(servers):] + servers[: r % len(servers)]:
            rounds[server.name].append(measure_fixed(args, server, args.work))
    results = [
        measure(args, server, args.work, rounds[server.name], ch_url=ch) for server, ch in servers
    ]

    by = {r["name"]: r for r in results}
    ratios = {}
    for t in ("toctou", "toctou+clickhouse"):
        for peer in ("rotel", "otelcol"):
            if t in by and peer in by:
                ratios[f"{t}/{peer} spans/s"] = round(by[t]["spans_per_s"] / by[peer]["spans_per_s"], 3)
                a, b = by[t]["cpu_s_per_m_spans_at_fixed"], by[peer]["cpu_s_per_m_spans_at_fixed"]
                if a and b:
                    ratios[f"{t}/{peer} cpu per M spans at {args.fixed_rate}/s"] = round(a / b, 3)
                    ratios[f"{t}/{peer} cpu per M spans at {args.fixed_rate}/s, per round"] = [
                        round(x / y, 3) if x and y else None
                        for x, y in zip(
                            by[t]["cpu_s_per_m_spans_at_fixed_rounds"],
                            by[peer]["cpu_s_per_m_spans_at_fixed_rounds"],
                        )
                    ]
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": cpuinfo("model name"),
            # A VM's model name hides the host; these tell one host from another (the peers'
            # figures moved by up to 45% between hosts, see bench/HISTORY.md).
            "cpu_family_model": f'{cpuinfo("cpu family")}/{cpuinfo("model")}',
            "cpu_mhz": cpuinfo("cpu MHz"),
            "cache": cpuinfo("cache size"),
            "kernel": os.uname().release,
            "server_cpu": args.server_cpu,
            "load_cpu": args.load_cpu,
        },
        "load": {
            "protocol": args.protocol,
            "connections": args.connections,
            "spans_per_request": 512,
            "saturation_seconds": args.sat_seconds,
            "fixed_rate_spans_per_s": args.fixed_rate,
            "fixed_rate_seconds": args.fixed_seconds,
            "fixed_rate_rounds": args.fixed_rounds,
            "latency_rate_spans_per_s": args.latency_rate,
        },
        "results": results,
        "ratios": ratios,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
    print(json.dumps({"ratios": ratios, "spans_per_s": {r["name"]: r["spans_per_s"] for r in results}}))


if __name__ == "__main__":
    main()
