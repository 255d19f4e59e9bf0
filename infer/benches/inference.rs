//! What inference costs on one core: database client spans of a shop-like workload (each
//! request reads a row, saves it back, inserts an order; its server span names the route)
//! with the change stream's records of the writes, through the inference stage and the
//! engine; against the same races reported by toctou spans (a check and a use per request,
//! audit records naming their requests) through the engine alone, the path of today's spans
//! with toctou attributes. Decoding is left out of both (the receivers' cost, measured
//! elsewhere).
//!
//! ```sh
//! cargo bench -p toctou-infer --bench inference
//! ```

use std::hint::black_box;
use std::time::Instant;
use toctou_cdc::{Mapping, Op, RowChange};
use toctou_correlator::{Config as EngineConfig, Engine};
use toctou_infer::{Config, Inference};
use toctou_schema::testing::span_at;
use toctou_schema::{AuditEvent, DbParams, DbSpanEvent, DbStatement, Event, Phase};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const REQUESTS: u64 = 200_000;
const ROWS: u64 = 20_000;
const MS: u64 = 1_000_000;
const T0: u64 = 1_800_000_000_000 * MS;

fn trace(i: u64) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&(i + 1).to_be_bytes());
    t[8..].copy_from_slice(&0x5eed_u64.to_be_bytes());
    t
}

/// The `n`th span of request `i`.
fn span_id(n: u8, i: u64) -> [u8; 8] {
    let mut id = (i as u32 as u64).to_be_bytes();
    id[0] = n;
    id
}

fn db(i: u64, n: u8, at: u64, sql: &str, params: String) -> Event {
    Event::Db(DbSpanEvent {
        trace_id: trace(i),
        span_id: span_id(n, i),
        root: false,
        start_ns: at,
        end_ns: at + MS / 2,
        service: "shop".into(),
        request_id: None,
        route: None,
        statement: Some(DbStatement {
            system: "postgresql".into(),
            text: sql.into(),
            params: DbParams::Rendered(params),
            status: None,
            failed: false,
        }),
    })
}

fn change(
    op: Op,
    table: &str,
    id: u64,
    columns: Vec<(String, String)>,
    at: u64,
    tx: u64,
) -> (AuditEvent, RowChange) {
    let c = RowChange {
        op,
        schema: "public".into(),
        table: table.into(),
        key: vec![("id".into(), id.to_string())],
        row_version: columns
            .iter()
            .find(|(c, _)| c == "version")
            .map(|(_, v)| v.clone()),
        position: tx * 1000,
        index: 0,
        tx: tx.to_string(),
        request_id: None,
        commit_time_ns: at,
        columns,
    };
    (Mapping::new("postgres").audit(&c), c)
}

enum Input {
    Event(Event),
    Change(AuditEvent, RowChange),
}

/// Request `i`: read row `i % ROWS` at its current version, save it, insert an order; the
/// changes of its two writes; its server span.
fn workload() -> (Vec<Input>, u64) {
    let mut versions = vec![1u64; ROWS as usize];
    let mut out = Vec::new();
    let mut spans = 0;
    for i in 0..REQUESTS {
        let row = i % ROWS;
        let at = T0 + i * MS / 10;
        let v = versions[row as usize];
        versions[row as usize] += 1;
        out.push(Input::Event(db(
            i,
            1,
            at,
            "SELECT stock, version FROM items WHERE id = %s",
            format!("({row},)"),
        )));
        out.push(Input::Event(db(
            i,
            2,
            at + MS,
            "UPDATE items SET stock = %s, version = %s WHERE id = %s",
            format!("({}, {}, {row})", 1000 - i, v + 1),
        )));
        out.push(Input::Event(db(
            i,
            3,
            at + 2 * MS,
            "INSERT INTO orders (item_id, qty) VALUES (%s, %s)",
            format!("({row}, 1)"),
        )));
        let (a, c) = change(
            Op::Update,
            "items",
            row,
            vec![
                ("id".into(), row.to_string()),
                ("stock".into(), (1000 - i).to_string()),
                ("version".into(), (v + 1).to_string()),
            ],
            at + 3 * MS,
            i,
        );
        out.push(Input::Change(a, c));
        let (a, c) = change(
            Op::Insert,
            "orders",
            i,
            vec![
                ("id".into(), i.to_string()),
                ("item_id".into(), row.to_string()),
            ],
            at + 3 * MS,
            i,
        );
        out.push(Input::Change(a, c));
        out.push(Input::Event(Event::Db(DbSpanEvent {
            trace_id: trace(i),
            span_id: [9; 8],
            root: true,
            start_ns: at,
            end_ns: at + 4 * MS,
            service: "shop".into(),
            request_id: None,
            route: Some("/buy/<id>".into()),
            statement: None,
        })));
        spans += 4;
    }
    (out, spans)
}

/// The same requests as toctou spans: a check and a use each, audit records naming them, and
/// the orders' inserts.
fn toctou_workload() -> (Vec<Event>, u64) {
    let mut versions = vec![1u64; ROWS as usize];
    let mut out = Vec::new();
    for i in 0..REQUESTS {
        let row = i % ROWS;
        let at = T0 + i * MS / 10;
        let v = versions[row as usize];
        versions[row as usize] += 1;
        let (resource, request) = (format!("public.items/{row}"), format!("req-{i}"));
        let span = |phase, n: u8, at: u64| {
            span_at(phase, &resource, &request, at)
                .lasting_ns(MS / 2)
                .ids(trace(i), span_id(n, i))
                .version(&v.to_string())
                .service("shop", "update")
                .0
        };
        // A check ends at its time, a use starts at its: [at, at + MS/2], then at + MS.
        out.push(Event::Span(span(Phase::Check, 1, at + MS / 2)));
        out.push(Event::Span(span(Phase::Use, 2, at + MS)));
        let (mut a, _) = change(
            Op::Update,
            "items",
            row,
            vec![("version".into(), (v + 1).to_string())],
            at + 3 * MS,
            i,
        );
        a.request_id = Some(format!("req-{i}"));
        out.push(Event::Audit(a));
        // The order's insert is in the change stream whoever reports the race.
        let (a, _) = change(
            Op::Insert,
            "orders",
            i,
            vec![("id".into(), i.to_string())],
            at + 3 * MS,
            i,
        );
        out.push(Event::Audit(a));
    }
    let spans = REQUESTS * 2;
    (out, spans)
}

fn main() {
    let median = |mut t: Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let mut inferred = Vec::new();
    let mut findings_inferred = 0;
    let mut spans_inferred = 0;
    for _ in 0..5 {
        let (input, spans) = workload();
        spans_inferred = spans;
        let mut stage = Inference::new(Config::default());
        let mut engine = Engine::new(EngineConfig::default()).unwrap();
        let (mut derived, mut findings) = (Vec::new(), Vec::new());
        let start = Instant::now();
        // Arrival in the events' own time: the hold and the engine's timers run as they
        // would live.
        let mut now = T0;
        for x in input {
            match x {
                Input::Event(e) => {
                    now = now.max(e.event_time_ns());
                    if let Event::Db(d) = e {
                        stage.on_db(d, now, &mut derived);
                    }
                }
                Input::Change(a, c) => {
                    now = now.max(a.time_ns);
                    stage.on_change(a, Some(c), now, &mut derived);
                }
            }
            for e in derived.drain(..) {
                engine.ingest(e, now, &mut findings);
            }
            if now % (100 * MS) < MS / 10 {
                stage.tick(now, &mut derived);
                engine.tick(now, &mut findings);
            }
        }
        stage.flush(&mut derived);
        for e in derived.drain(..) {
            engine.ingest(e, now, &mut findings);
        }
        engine.flush(now + 60_000 * MS, &mut findings);
        inferred.push(start.elapsed().as_secs_f64());
        findings_inferred = black_box(findings.len());
        let s = stage.stats();
        assert_eq!(s.pairs.get("matched"), Some(&REQUESTS), "{s:?}");
    }
    let mut plain = Vec::new();
    let mut spans_plain = 0;
    for _ in 0..5 {
        let (input, spans) = toctou_workload();
        spans_plain = spans;
        let mut engine = Engine::new(EngineConfig::default()).unwrap();
        let mut findings = Vec::new();
        let start = Instant::now();
        let mut now = T0;
        for e in input {
            now = now.max(e.event_time_ns());
            engine.ingest(e, now, &mut findings);
            if now % (100 * MS) < MS / 10 {
                engine.tick(now, &mut findings);
            }
        }
        engine.flush(now + 60_000 * MS, &mut findings);
        plain.push(start.elapsed().as_secs_f64());
        black_box(findings.len());
    }
    let (ti, tp) = (median(inferred), median(plain));
    let rate_i = spans_inferred as f64 / ti;
    let rate_p = spans_plain as f64 / tp;
    println!(
        "inferred: {REQUESTS} requests, {spans_inferred} database and server spans and {} change records in {ti:.3} s: {rate_i:.0} spans/s on one core ({findings_inferred} findings)",
        REQUESTS * 2
    );
    println!(
        "toctou spans: the same requests as {spans_plain} check and use spans and {} audit records in {tp:.3} s: {rate_p:.0} spans/s",
        REQUESTS * 2
    );
    println!(
        "inferred spans/s over toctou spans/s: {:.2} (target at least 0.5)",
        rate_i / rate_p
    );
}
