// Drives Debian's headless Chromium through playwright-core against toctou's built-in page,
// and prints what a user would see as one JSON object on stdout, for tests/page.rs to compare
// with the findings API. It asserts nothing itself: the Rust test does.
//
//   node drive.mjs '<spec as JSON>'
//
// spec: { url, chromium, nodeModules, polls (wait for this many completed polls),
//         filter (a kind to click), open (a finding id to expand, "first", or
//         "kind:<kind>" for the newest of a kind),
//         screenshot (a PNG path), width, height }
// Output: { console: [...], errors: [...], failedRequests: [...], badResponses: [...],
//           status, polls, counts: {kind: n}, rows: [...], detail, ... }
import { createRequire } from "node:module";
import path from "node:path";

const spec = JSON.parse(process.argv[2]);
const require = createRequire(path.join(spec.nodeModules, "noop.js"));
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath: spec.chromium,
  headless: true,
  // Playwright adds --headless, --no-sandbox (no chromiumSandbox) and a fresh empty
  // --user-data-dir; these keep Chromium off the network it cannot reach here.
  args: [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

const out = { console: [], errors: [], failedRequests: [], badResponses: [] };
try {
  const context = await browser.newContext({
    viewport: { width: spec.width || 1440, height: spec.height || 900 },
    deviceScaleFactor: spec.scale || 1,
  });
  const page = await context.newPage();
  page.on("console", (m) => {
    const entry = `${m.type()}: ${m.text()}`;
    out.console.push(entry);
    if (m.type() === "error") out.errors.push(entry);
  });
  page.on("pageerror", (e) => out.errors.push(`pageerror: ${e.message}`));
  page.on("requestfailed", (r) => out.failedRequests.push(`${r.url()}: ${r.failure()?.errorText}`));
  page.on("response", (r) => {
    if (r.status() >= 400) out.badResponses.push(`${r.status()} ${r.url()}`);
  });

  const response = await page.goto(spec.url, { waitUntil: "load" });
  out.documentStatus = response.status();
  out.documentHeaders = response.headers();

  const waitPolls = async (n) =>
    page.waitForFunction((n) => Number(document.body.dataset.polls || 0) >= n, n, { timeout: 20000 });
  const polls = async () => page.evaluate(() => Number(document.body.dataset.polls || 0));

  await waitPolls(spec.polls || 2);

  if (spec.filter) {
    const before = await polls();
    await page.click(`.card[data-kind="${spec.filter}"]`);
    await page.waitForFunction(
      ([kind, before]) => document.body.dataset.filter === kind && Number(document.body.dataset.polls) > before,
      [spec.filter, before],
      { timeout: 20000 }
    );
  }
  if (spec.open) {
    const selector =
      spec.open === "first"
        ? "tr.finding"
        : spec.open.startsWith("kind:")
          ? `tr.finding[data-kind="${spec.open.slice(5)}"]`
          : `tr.finding[data-id="${spec.open}"]`;
    await page.click(selector);
    await page.waitForSelector("tr.detail", { timeout: 10000 });
  }
  // One more poll with everything in place: what is read below is a settled render.
  await waitPolls((await polls()) + 1);

  Object.assign(
    out,
    await page.evaluate(() => {
      const text = (sel) => document.querySelector(sel)?.textContent ?? null;
      const counts = {};
      for (const c of document.querySelectorAll(".card")) {
        counts[c.dataset.kind] = Number(c.querySelector(".count").dataset.value);
      }
      const rows = [...document.querySelectorAll("tr.finding")].map((r) => ({
        id: r.dataset.id,
        kind: r.dataset.kind,
        service: r.querySelector(".service").textContent,
        resource: r.querySelector(".resource").textContent,
        request: r.querySelector(".request").textContent,
      }));
      const detail = document.querySelector("tr.detail");
      const detailId = detail ? detail.dataset.id : null;
      const table = document.getElementById("findings");
      return {
        status: document.getElementById("status").dataset.state,
        statusText: text("#status-text"),
        polls: Number(document.body.dataset.polls),
        filter: document.body.dataset.filter,
        counts,
        rows,
        detail: detail ? detail.textContent : null,
        detailId,
        findingsEmptyShown: !document.getElementById("findings-empty").hidden,
        rateEmptyShown: !document.getElementById("rate-empty").hidden,
        histEmptyShown: !document.getElementById("hist-empty").hidden,
        charts: document.querySelectorAll(".uplot canvas").length,
        pipeline: text("#pipeline"),
        risks: document.getElementById("risks-panel").hidden
          ? []
          : [...document.querySelectorAll("tr.risk")].map((r) => ({
              endpoint: r.querySelector(".endpoint").textContent.replace(/^ · /, ""),
              pattern: r.querySelector(".pattern").textContent,
              table: r.querySelector(".table").textContent,
            })),
        // Markup from a finding would show up as elements inside the table.
        elementsInTable: [...table.querySelectorAll("*")].map((e) => e.tagName.toLowerCase()),
        scripts: document.scripts.length,
        pwned: window.__pwned ?? null,
      };
    })
  );

  if (spec.screenshot) {
    // Clicking scrolled the row into view; the picture starts at the top of the page.
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: spec.screenshot, fullPage: Boolean(spec.fullPage) });
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out));
