// The built-in page: polls the findings API of this toctou process and draws what it answers.
// Every string from a finding is attacker-controlled (service names, resources, request ids
// come from whoever can send telemetry), so this script only ever creates elements and sets
// their text; it never writes markup.
"use strict";

(function () {
  const POLL_MS = 1000;
  const RATE_SECONDS = 300;
  const LIMIT = 50;

  // The kinds in the order of the README, with what each means in one line.
  const KINDS = [
    { kind: "stale_check", label: "Stale check", color: "#2563eb", what: "used a version other than the one checked" },
    { kind: "duplicate_use", label: "Duplicate use", color: "#ea580c", what: "acted twice on one idempotency key or create" },
    { kind: "unchecked_use", label: "Unchecked use", color: "#dc2626", what: "acted with no check, or after a denial" },
    { kind: "authz_drift", label: "Authz drift", color: "#9333ea", what: "policy changed between allow and use" },
    { kind: "partial_create", label: "Partial create", color: "#ca8a04", what: "a create never finalized in time" },
    { kind: "orphan_check", label: "Orphan check", color: "#64748b", what: "an allowing check no use followed" },
  ];
  const BY_KIND = Object.fromEntries(KINDS.map((k) => [k.kind, k]));
  const SEVERITY = {
    unchecked_use: "critical",
    authz_drift: "critical",
    duplicate_use: "high",
    stale_check: "high",
    partial_create: "medium",
    orphan_check: "info",
  };

  const state = {
    filter: null, // a kind, or null for all
    open: new Set(), // finding ids whose evidence is shown
    findings: [],
    findingsKey: "",
    polls: 0,
    rateChart: null,
    histChart: null,
    histLabels: [],
  };

  // ---- small DOM helpers: text only ----

  function el(tag, props, children) {
    const e = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === undefined || v === null) continue;
        if (k === "text") e.textContent = String(v);
        else if (k === "class") e.className = v;
        else if (k === "title") e.title = String(v);
        else if (k === "data") Object.assign(e.dataset, v);
        else e.setAttribute(k, String(v));
      }
    }
    for (const c of children || []) {
      if (c === null || c === undefined) continue;
      e.append(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return e;
  }

  const $ = (id) => document.getElementById(id);

  function fmtInt(n) {
    return Number(n).toLocaleString("en-US");
  }

  function pad(n, w) {
    return String(n).padStart(w, "0");
  }

  // Nanoseconds since the epoch as local wall time with milliseconds. Numbers lose the
  // nanoseconds above 2^53, which a millisecond display does not show.
  function fmtTime(ns) {
    if (ns === null || ns === undefined) return "";
    const d = new Date(Number(ns) / 1e6);
    return `${pad(d.getHours(), 2)}:${pad(d.getMinutes(), 2)}:${pad(d.getSeconds(), 2)}.${pad(d.getMilliseconds(), 3)}`;
  }

  function fmtIso(ns) {
    if (ns === null || ns === undefined) return "";
    return new Date(Number(ns) / 1e6).toISOString();
  }

  function fmtDuration(ns) {
    if (ns === null || ns === undefined) return "";
    const n = Number(ns);
    if (n < 1e3) return `${n} ns`;
    if (n < 1e6) return `${(n / 1e3).toFixed(n < 1e4 ? 1 : 0)} µs`;
    if (n < 1e9) return `${(n / 1e6).toFixed(n < 1e7 ? 2 : 1)} ms`;
    return `${(n / 1e9).toFixed(n < 1e10 ? 2 : 1)} s`;
  }

  function fmtBound(ns) {
    if (ns < 1e6) return `${ns / 1e3}µs`;
    if (ns < 1e9) return `${ns / 1e6}ms`;
    return `${ns / 1e9}s`;
  }

  // ---- status and header ----

  function setStatus(kind, text) {
    const s = $("status");
    s.dataset.state = kind;
    $("status-text").textContent = text;
  }

  function renderPipeline(summary) {
    const p = summary.pipeline || {};
    const stats = [
      ["events", p.events],
      ["pairs joined", p.pairs],
      ["pending checks", p.pending_checks],
      ["prevented races", p.prevented_races],
    ];
    const box = $("pipeline");
    box.replaceChildren(
      ...stats
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => el("span", { class: "stat", data: { stat: k } }, [el("b", { text: fmtInt(v) }), ` ${k}`]))
    );
  }

  // ---- count cards ----

  function buildCards() {
    const box = $("counts");
    for (const k of KINDS) {
      const card = el("button", { type: "button", class: "card", "aria-pressed": "false", data: { kind: k.kind } }, [
        el("span", { class: "label" }, [
          el("span", { text: k.label }),
          el("span", { class: `sev sev-${SEVERITY[k.kind]}`, text: SEVERITY[k.kind] }),
        ]),
        el("span", { class: "count zero", text: "0" }),
        el("span", { class: "what", text: k.what }),
      ]);
      card.style.setProperty("--kind", k.color);
      card.style.setProperty("--kind-soft", `${k.color}33`);
      card.title = `Show only ${k.kind} findings`;
      card.addEventListener("click", () => setFilter(state.filter === k.kind ? null : k.kind));
      box.append(card);
    }
    $("filter-clear").addEventListener("click", () => setFilter(null));
  }

  function renderCounts(summary) {
    for (const k of KINDS) {
      const n = (summary.counts && summary.counts[k.kind]) || 0;
      const c = document.querySelector(`.card[data-kind="${k.kind}"] .count`);
      c.textContent = fmtInt(n);
      c.dataset.value = String(n);
      c.classList.toggle("zero", n === 0);
    }
  }

  function setFilter(kind) {
    state.filter = kind;
    for (const card of document.querySelectorAll(".card")) {
      card.setAttribute("aria-pressed", String(card.dataset.kind === kind));
    }
    const chip = $("filter-clear");
    chip.hidden = kind === null;
    chip.textContent = kind === null ? "" : `${BY_KIND[kind].label} only  ✕`;
    state.findingsKey = "";
    poll();
  }

  // ---- charts ----

  function axisStyle() {
    return {
      stroke: "#64748b",
      grid: { stroke: "#eef2f7", width: 1 },
      ticks: { stroke: "#e2e8f0", width: 1, size: 4 },
      font: "11px system-ui, sans-serif",
    };
  }

  function chartWidth(id) {
    return Math.max(200, Math.floor($(id).clientWidth));
  }

  function buildCharts() {
    const rateOpts = {
      width: chartWidth("rate-chart"),
      height: 240,
      cursor: { drag: { x: false, y: false }, points: { size: 6 } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      axes: [
        // One line of wall-clock time per tick: uPlot's default adds a date line that
        // collides with the next tick's on a short range.
        Object.assign(axisStyle(), { space: 64, values: (u, splits) => splits.map((s) => fmtTime(s * 1e9).slice(0, 8)) }),
        Object.assign(axisStyle(), { size: 46, label: "findings/s", labelSize: 16, labelFont: "11px system-ui, sans-serif" }),
      ],
      series: [
        { value: (u, v) => (v === null ? "" : fmtTime(v * 1e9).slice(0, 8)) },
        ...KINDS.map((k) => ({
          label: k.label,
          stroke: k.color,
          width: 1.6,
          fill: `${k.color}12`,
          points: { show: false },
          value: (u, v) => (v === null ? "–" : fmtInt(v)),
        })),
      ],
      legend: { live: true },
    };
    state.rateChart = new uPlot(rateOpts, [[], ...KINDS.map(() => [])], $("rate-chart"));

    const histOpts = {
      width: chartWidth("hist-chart"),
      height: 240,
      cursor: { drag: { x: false, y: false }, points: { show: false } },
      scales: {
        x: { time: false, range: (u) => [-0.6, Math.max(1, (u.data[0] || []).length) - 0.4] },
        y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] },
      },
      axes: [
        Object.assign(axisStyle(), {
          splits: (u) => (u.data[0] || []).map((_, i) => i),
          values: (u, splits) => {
            // Room for about one label per 46 px: every step-th bucket is labelled.
            const step = Math.max(1, Math.ceil(splits.length / Math.max(1, u.bbox.width / devicePixelRatio / 46)));
            return splits.map((i) => (i % step === 0 ? state.histLabels[i] || "" : ""));
          },
          grid: { show: false },
        }),
        Object.assign(axisStyle(), { size: 46 }),
      ],
      series: [
        { label: "window", value: (u, v) => (v === null ? "" : state.histLabels[v] || "") },
        {
          label: "findings",
          stroke: "#0284c7",
          fill: "#38bdf8aa",
          width: 1,
          paths: uPlot.paths.bars({ size: [0.78, 48], align: 0 }),
          points: { show: false },
          value: (u, v) => (v === null ? "–" : fmtInt(v)),
        },
      ],
    };
    state.histChart = new uPlot(histOpts, [[], []], $("hist-chart"));

    // Charts follow their panels' width; uPlot does not do that by itself.
    const observer = new ResizeObserver(() => {
      state.rateChart.setSize({ width: chartWidth("rate-chart"), height: 240 });
      state.histChart.setSize({ width: chartWidth("hist-chart"), height: 240 });
    });
    observer.observe($("rate-chart"));
    observer.observe($("hist-chart"));
  }

  function renderCharts(summary) {
    const rate = summary.rate;
    const all = rate.counts[KINDS[0].kind].length;
    // Seconds before this process started hold nothing: a young process shows from its start
    // (and at least a minute) instead of a flat line with everything squeezed to the right.
    const startedS = Math.floor(Number(summary.started_ns) / 1e9) - 5;
    const skip = Math.max(0, Math.min(all - 60, startedS - rate.start_s));
    const n = all - skip;
    const xs = Array.from({ length: n }, (_, i) => rate.start_s + (skip + i) * rate.step_s);
    state.rateChart.setData([xs, ...KINDS.map((k) => rate.counts[k.kind].slice(skip))]);
    let inWindow = 0;
    for (const k of KINDS) for (const v of rate.counts[k.kind]) inWindow += v;
    const span = n * rate.step_s < 120 ? `${n * rate.step_s} seconds` : `${Math.round((n * rate.step_s) / 60)} minutes`;
    $("rate-empty").hidden = inWindow > 0;
    $("rate-empty").textContent = `No findings in the last ${span}.`;
    $("rate-hint").textContent = `last ${span}, by kind`;

    const h = summary.race_window;
    const buckets = h.bounds_ns.length + 1;
    state.histLabels = h.bounds_ns.map(fmtBound).concat([`>${fmtBound(h.bounds_ns[h.bounds_ns.length - 1])}`]);
    const totals = new Array(buckets).fill(0);
    for (const k of KINDS) h.counts[k.kind].forEach((v, i) => (totals[i] += v));
    // Trim empty buckets at both ends so the bars that exist get the room.
    let lo = totals.findIndex((v) => v > 0);
    let hi = buckets - 1 - [...totals].reverse().findIndex((v) => v > 0);
    if (lo < 0) {
      lo = 3;
      hi = 12;
    }
    lo = Math.max(0, lo - 1);
    hi = Math.min(buckets - 1, hi + 1);
    state.histLabels = state.histLabels.slice(lo, hi + 1);
    const shown = totals.slice(lo, hi + 1);
    state.histChart.setData([shown.map((_, i) => i), shown]);
    const withWindow = totals.reduce((a, b) => a + b, 0);
    const without = Object.values(h.none).reduce((a, b) => a + b, 0);
    $("hist-empty").hidden = withWindow > 0;
    $("hist-hint").textContent =
      `check end → use start, ${fmtInt(withWindow)} findings` + (without > 0 ? ` (${fmtInt(without)} without a window)` : "");
  }

  // ---- findings table ----

  function field(label, value, mono) {
    const empty = value === null || value === undefined || value === "";
    return el("div", { class: "field" }, [
      el("span", { class: "k", text: label }),
      el("span", { class: empty ? "v none" : mono ? "v mono" : "v", text: empty ? "—" : value }),
    ]);
  }

  // Where a write falls against the check: a write before it can still be evidence (a check
  // that read a stale cache or replica did not see it).
  function relativeToCheck(ns, checkNs) {
    if (checkNs === null || checkNs === undefined) return "";
    const d = Number(ns) - Number(checkNs);
    return d >= 0 ? `${fmtDuration(d)} after check` : `${fmtDuration(-d)} before check`;
  }

  function detailRow(f) {
    const ev = [];
    ev.push(el("h3", { text: "Check" }));
    ev.push(field("span id", f.check_span_id, true));
    ev.push(field("time", f.check_time_ns === null ? null : `${fmtTime(f.check_time_ns)}  (${fmtIso(f.check_time_ns)})`));
    ev.push(field("checked version", f.checked_version, true));
    ev.push(field("source", f.check_source));
    ev.push(field("policy", f.policy ? `${f.policy}${f.policy_version ? ` @ ${f.policy_version}` : ""}` : null, true));
    ev.push(field("idempotency key", f.idempotency_key, true));
    ev.push(el("h3", { text: "Use" }));
    ev.push(field("span id", f.use_span_id, true));
    ev.push(field("time", f.use_time_ns === null ? null : `${fmtTime(f.use_time_ns)}  (${fmtIso(f.use_time_ns)})`));
    ev.push(field("used version", f.used_version, true));
    ev.push(field("race window", fmtDuration(f.race_window_ns)));
    if (f.prior_use) {
      const p = f.prior_use;
      ev.push(field("duplicates the use of", `request ${p.request_id} · span ${p.span_id || "—"} · ${fmtTime(p.time_ns)}`, true));
    }
    ev.push(el("h3", { text: "Intervening writes" }));
    if (f.intervening && f.intervening.length > 0) {
      const rows = f.intervening.map((w) =>
        el("tr", null, [
          el("td", { text: w.action }),
          el("td", { class: "mono", text: w.resource }),
          el("td", { class: "mono", text: w.version === null ? "—" : w.version }),
          el("td", { class: "mono", text: w.request_id === null ? "—" : w.request_id }),
          el("td", { text: w.actor === null ? "—" : w.actor }),
          el("td", { class: "nowrap", text: fmtTime(w.time_ns) }),
          el("td", { class: "sub nowrap", text: relativeToCheck(w.time_ns, f.check_time_ns) }),
        ])
      );
      const head = el("tr", null, ["action", "resource", "version", "request", "actor", "time", ""].map((h) => el("th", { text: h })));
      ev.push(el("div", { class: "writes" }, [el("table", null, [el("thead", null, [head]), el("tbody", null, rows)])]));
    } else {
      ev.push(el("div", { class: "writes none", text: "none recorded" }));
    }
    if (f.inferred) {
      // A service with no toctou code: its statements are the evidence.
      ev.push(el("h3", { text: "Inferred from database spans" }));
      ev.push(field("own write matched by", f.inferred.matched_by));
      for (const [i, sql] of (f.inferred.statements || []).entries()) {
        ev.push(field(i === 0 ? "check (read)" : "use (write)", sql, true));
      }
    }
    ev.push(el("h3", { text: "Identity" }));
    ev.push(field("finding id", f.id, true));
    ev.push(field("trace id", f.trace_id, true));
    ev.push(field("request id", f.request_id, true));
    ev.push(field("service · operation", `${f.service} · ${f.operation || "—"}`));
    ev.push(field("resource", f.resource, true));
    ev.push(field("decided at (event time)", `${fmtTime(f.event_time_ns)}  (${fmtIso(f.event_time_ns)})`));

    const cell = el("td", { colspan: "7" }, [el("p", { class: "reason", text: f.reason }), el("div", { class: "evidence" }, ev)]);
    return el("tr", { class: "detail", data: { id: f.id } }, [cell]);
  }

  function findingRow(f) {
    const k = BY_KIND[f.kind] || { label: f.kind, color: "#64748b" };
    const kind = el("span", { class: "kind", text: k.label });
    kind.style.setProperty("--kind", k.color);
    const open = state.open.has(f.id);
    const row = el("tr", { class: open ? "finding open" : "finding", data: { id: f.id, kind: f.kind }, "aria-expanded": String(open) }, [
      el("td", { class: "time", text: fmtTime(f.detected_at_ns), title: fmtIso(f.detected_at_ns) }),
      el("td", null, [kind]),
      el("td", { title: `${f.service} · ${f.operation}` }, [
        el("span", { class: "service", text: f.service }),
        el("span", { class: "sub", text: f.operation ? ` · ${f.operation}` : "" }),
      ]),
      el("td", { class: "mono resource", text: f.resource, title: f.resource }),
      el("td", { class: "mono request", text: f.request_id, title: f.request_id }),
      el("td", { class: "num", text: fmtDuration(f.race_window_ns) || "—" }),
      el("td", { class: "mono trace", text: f.trace_id ? `${f.trace_id.slice(0, 12)}…` : "—", title: f.trace_id }),
    ]);
    const toggle = () => {
      if (state.open.has(f.id)) state.open.delete(f.id);
      else state.open.add(f.id);
      renderFindings(true);
      // The rows were rebuilt: keep the keyboard where it was.
      const again = document.querySelector(`tr.finding[data-id="${CSS.escape(f.id)}"]`);
      if (again && document.activeElement === document.body) again.focus();
    };
    row.tabIndex = 0;
    row.addEventListener("click", toggle);
    row.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        toggle();
      }
    });
    return row;
  }

  function renderFindings(force) {
    const list = state.findings;
    const key = list.map((f) => f.id).join(",") + "|" + [...state.open].join(",");
    if (!force && key === state.findingsKey) return;
    state.findingsKey = key;
    const rows = [];
    for (const f of list) {
      rows.push(findingRow(f));
      if (state.open.has(f.id)) rows.push(detailRow(f));
    }
    $("findings-body").replaceChildren(...rows);
    $("findings-empty").hidden = list.length > 0;
    $("findings-empty-title").textContent = state.filter ? `No ${BY_KIND[state.filter].label.toLowerCase()} findings yet` : "No findings yet";
    $("findings").hidden = list.length === 0;
    const what = state.filter ? `${state.filter} ` : "";
    $("findings-hint").textContent =
      list.length === 0 ? "" : `newest first, the latest ${list.length} ${what}findings · click a row for its evidence`;
  }

  function renderRisks(report) {
    const risks = (report && report.risks) || [];
    $("risks-panel").hidden = risks.length === 0;
    const rows = risks.map((r) =>
      el("tr", { class: "risk" }, [
        el("td", null, [el("span", { class: "service", text: r.service }), el("span", { class: "sub endpoint", text: ` · ${r.endpoint}` })]),
        el("td", { class: "pattern", text: r.kind.replaceAll("_", " ") }),
        el("td", { class: "mono table", text: r.table }),
        el("td", { class: "num", text: fmtInt(r.requests) }),
        el("td", { class: "mono trace", text: r.example_trace_id ? `${r.example_trace_id.slice(0, 12)}…` : "—", title: `${r.example_trace_id}\n${r.read_statement}\n${r.write_statement}` }),
      ])
    );
    $("risks-body").replaceChildren(...rows);
  }

  // ---- polling ----

  async function getJson(url) {
    const resp = await fetch(url, { headers: { accept: "application/json" }, cache: "no-store" });
    if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
    return resp.json();
  }

  let inFlight = false;
  let again = false;
  let timer = null;

  // One request pair at a time; a poll asked for meanwhile (a filter click) runs right after.
  function poll() {
    if (inFlight) {
      again = true;
      return;
    }
    inFlight = true;
    clearTimeout(timer);
    const filter = state.filter;
    const kind = filter ? `&kind=${encodeURIComponent(filter)}` : "";
    Promise.all([
      getJson(`/api/v1/summary?seconds=${RATE_SECONDS}`),
      getJson(`/api/v1/findings?limit=${LIMIT}${kind}`),
      getJson("/api/v1/risks"),
    ])
      .then(([summary, findings, risks]) => {
        renderRisks(risks);
        renderPipeline(summary);
        renderCounts(summary);
        renderCharts(summary);
        if (filter === state.filter) {
          // The API answers oldest first; the page shows the newest on top.
          state.findings = (findings.findings || []).slice().reverse();
          renderFindings(false);
          state.polls += 1;
          // For measuring: navigation to the first complete render (tests/page/bench.mjs).
          if (state.polls === 1) performance.mark("toctou-first-render");
          document.body.dataset.polls = String(state.polls);
          document.body.dataset.filter = filter || "";
        }
        setStatus("live", `live · ${fmtTime(Date.now() * 1e6).slice(0, 8)}`);
      })
      .catch((err) => {
        setStatus("error", `disconnected: ${err.message}`);
      })
      .finally(() => {
        inFlight = false;
        if (again) {
          again = false;
          poll();
        } else if (!document.hidden) {
          // A tab in the background stops polling; it resumes when shown again.
          timer = setTimeout(poll, POLL_MS);
        }
      });
  }

  function start() {
    buildCards();
    buildCharts();
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) poll();
    });
    poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
