// Benchmark of the built-in page (BENCHMARKS.md): starts `toctou run`, and with 0 and then
// 100,000 findings stored measures the latency of what the page polls, the page's time from
// navigation to its first complete render in headless Chromium, and the process's RSS.
//
//   cargo build --release
//   tests/page/setup.sh
//   node tests/page/bench.mjs "$CARGO_TARGET_DIR/release/toctou"
//
// Prints a Markdown table. Not part of the test run: it asserts nothing and takes ~1 minute.
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";
import os from "node:os";

const binary = process.argv[2];
if (!binary) {
  console.error("usage: node tests/page/bench.mjs <path to the toctou binary>");
  process.exit(2);
}
const nodeDir = process.env.TOCTOU_NODE_DIR || path.join(os.homedir(), ".cache/toctou/node");
const require = createRequire(path.join(nodeDir, "node_modules", "noop.js"));
const { chromium } = require("playwright-core");
const chromiumPath = process.env.TOCTOU_CHROMIUM || "/usr/bin/chromium";

const FINDINGS = 100_000;
const BATCH = 5_000;
const REQUESTS = 2_000;
const PAGE_LOADS = 7;

function startToctou() {
  const child = spawn(
    binary,
    ["run", "--otlp-grpc-addr", "127.0.0.1:0", "--otlp-http-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0",
      "--allowed-lateness", "200ms", "--findings-file", "/dev/null"],
    { stdio: ["ignore", "ignore", "pipe"] }
  );
  return new Promise((resolve, reject) => {
    let log = "";
    child.stderr.on("data", (d) => {
      log += d;
      const m = log.match(/toctou run listening.*otlp_http=(\S+).*api=(\S+)/);
      if (m) resolve({ child, http: m[1], api: m[2] });
    });
    child.on("exit", (code) => reject(new Error(`toctou run exited ${code}:\n${log}`)));
  });
}

function rssMiB(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(status.match(/VmRSS:\s+(\d+)/)[1]) / 1024;
}

function quantile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

async function latency(url) {
  const times = [];
  let bytes = 0;
  for (let i = 0; i < REQUESTS; i++) {
    const t = performance.now();
    const resp = await fetch(url);
    const body = await resp.arrayBuffer();
    times.push(performance.now() - t);
    if (!resp.ok) throw new Error(`${url}: ${resp.status}`);
    bytes = body.byteLength;
  }
  times.sort((a, b) => a - b);
  return { p50: quantile(times, 0.5), p99: quantile(times, 0.99), bytes };
}

async function firstRender(browser, url) {
  const times = [];
  for (let i = 0; i < PAGE_LOADS; i++) {
    const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
    const page = await context.newPage();
    await page.goto(url);
    await page.waitForFunction(() => performance.getEntriesByName("toctou-first-render").length > 0);
    times.push(await page.evaluate(() => performance.getEntriesByName("toctou-first-render")[0].startTime));
    await context.close();
  }
  times.sort((a, b) => a - b);
  return quantile(times, 0.5);
}

async function pageWeight(api) {
  const html = await (await fetch(`${api}/`)).text();
  let bytes = html.length;
  for (const m of html.matchAll(/"(\/assets\/[^"]+)"/g)) {
    bytes += (await (await fetch(`${api}${m[1]}`)).arrayBuffer()).byteLength;
  }
  return bytes;
}

async function load(http, api) {
  const t0 = BigInt(Date.now() - 5_000) * 1_000_000n;
  const attr = (key, value) => ({ key, value: { stringValue: value } });
  for (let b = 0; b < FINDINGS / BATCH; b++) {
    const spans = [];
    for (let i = 0; i < BATCH; i++) {
      const n = b * BATCH + i;
      const start = t0 + BigInt(n) * 1_000n;
      spans.push({
        traceId: (n + 1).toString(16).padStart(32, "0"),
        spanId: (n + 1).toString(16).padStart(16, "0"),
        name: "use",
        kind: 1,
        startTimeUnixNano: start.toString(),
        endTimeUnixNano: (start + 500n).toString(),
        attributes: [attr("toctou.phase", "use"), attr("toctou.resource", `inventory/sku-${n % 1000}`), attr("toctou.operation", "reserve")],
      });
    }
    const body = { resourceSpans: [{ resource: { attributes: [attr("service.name", "bulk")] }, scopeSpans: [{ spans }] }] };
    const resp = await fetch(`${http}/v1/traces`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    if (!resp.ok) throw new Error(`OTLP: ${resp.status}`);
  }
  for (;;) {
    const s = await (await fetch(`${api}/api/v1/summary`)).json();
    if (s.total >= FINDINGS) return;
    await new Promise((r) => setTimeout(r, 200));
  }
}

const { child, http, api } = await startToctou();
const apiUrl = `http://${api}`;
const browser = await chromium.launch({
  executablePath: chromiumPath,
  headless: true,
  args: ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const rows = [];
try {
  for (const stage of ["0", "100000"]) {
    if (stage !== "0") await load(`http://${http}`, apiUrl);
    const summary = await latency(`${apiUrl}/api/v1/summary`);
    const latest = await latency(`${apiUrl}/api/v1/findings?limit=50`);
    // A kind with no findings: the store scans all of them to find none (the worst case).
    const scan = await latency(`${apiUrl}/api/v1/findings?limit=50&kind=authz_drift`);
    const render = await firstRender(browser, `${apiUrl}/`);
    rows.push({ stage, summary, latest, scan, render, rss: rssMiB(child.pid) });
  }
  const weight = await pageWeight(apiUrl);
  const ms = (x) => x.toFixed(2);
  console.log(`page weight (HTML + script + styles + uPlot + icon, uncompressed): ${(weight / 1024).toFixed(1)} KiB`);
  console.log("");
  console.log("| findings stored | summary p50 / p99 (ms) | summary bytes | latest 50 p50 / p99 (ms) | kind filter, no match, p50 / p99 (ms) | first render (ms, median of 7) | RSS (MiB) |");
  console.log("|---|---|---|---|---|---|---|");
  for (const r of rows) {
    console.log(
      `| ${Number(r.stage).toLocaleString("en-US")} | ${ms(r.summary.p50)} / ${ms(r.summary.p99)} | ${r.summary.bytes} | ${ms(r.latest.p50)} / ${ms(r.latest.p99)} | ${ms(r.scan.p50)} / ${ms(r.scan.p99)} | ${r.render.toFixed(0)} | ${r.rss.toFixed(1)} |`
    );
  }
} finally {
  await browser.close();
  child.kill("SIGTERM");
}
