//! What reading a database client span's statement costs on one core: parsing a statement
//! seen for the first time (`toctou_sql::interpret`), and a cached reading
//! (`toctou_sql::Interpreter`, the path of every span after the first of its text), over the
//! real statements of sql/testdata/orm_spans.jsonl (Django, SQLAlchemy, psycopg).
//!
//! ```sh
//! cargo bench -p toctou-sql --bench interpret
//! ```

use std::hint::black_box;
use std::time::Instant;
use toctou_sql::{interpret, Interpreter};

fn main() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/orm_spans.jsonl"
    ))
    .unwrap();
    let spans: Vec<(String, Option<String>)> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let a = &v["attributes"];
            let sql = a["db.statement"]
                .as_str()
                .or(a["db.query.text"].as_str())
                .unwrap()
                .to_string();
            let params = a["db.statement.parameters"].as_str().map(str::to_string);
            (sql, params)
        })
        .collect();
    let rounds = 200;
    let median = |mut t: Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };

    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..rounds {
            for (sql, _) in &spans {
                let _ = black_box(interpret(black_box(sql)));
            }
        }
        times.push(start.elapsed().as_secs_f64());
    }
    let n = (rounds * spans.len()) as f64;
    println!(
        "first sight (parse): {:.0} statements/s on one core, {:.1} µs each ({} distinct texts)",
        n / median(times.clone()),
        median(times) / n * 1e6,
        spans.len()
    );

    let mut interpreter = Interpreter::new(toctou_sql::DEFAULT_CAPACITY);
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..rounds * 20 {
            for (sql, params) in &spans {
                let reading = interpreter.read(black_box(sql));
                if let (Ok(s), Some(p)) = (reading.as_ref(), params) {
                    let _ = black_box(toctou_sql::parse_params_for(p, &s.names));
                }
            }
        }
        times.push(start.elapsed().as_secs_f64());
    }
    let n = (rounds * 20 * spans.len()) as f64;
    println!(
        "cached reading and parameters: {:.0} spans/s on one core, {:.2} µs each; hit rate {:.4}",
        n / median(times.clone()),
        median(times) / n * 1e6,
        interpreter.hit_rate()
    );
}
