//! Golden scenarios: `testdata/scenarios/<name>.txt` (events, in the scenario language of
//! `common`) against `testdata/scenarios/<name>.findings.json` (the findings, in order).
//!
//! `UPDATE_GOLDEN=1 cargo test -p toctou-correlator --test golden` rewrites the expected
//! files; review the diff before committing it. The `# expect:` line of each scenario is
//! checked independently of the golden file, so a regenerated file cannot quietly accept a
//! wrong kind. Each scenario is also replayed in shuffled orders within the lateness.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use toctou_schema::Finding;

fn scenarios() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/scenarios");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn scenarios_match_their_golden_findings() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let paths = scenarios();
    assert!(paths.len() >= 10, "scenarios missing: {paths:?}");
    let mut rng = StdRng::seed_from_u64(7);
    for path in paths {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let scenario = parse_scenario(&std::fs::read_to_string(&path).unwrap());
        let (findings, stats) = run(&scenario.config, scenario.events.clone());
        assert_eq!(
            stats.late_events, 0,
            "{name}: the file order must be on time"
        );

        let kinds: Vec<&str> = findings.iter().map(|f| f.kind.as_str()).collect();
        assert_eq!(
            kinds, scenario.expect,
            "{name}: kinds differ from `# expect:`"
        );

        let golden = path.with_extension("findings.json");
        let text = serde_json::to_string_pretty(&findings).unwrap() + "\n";
        if update {
            std::fs::write(&golden, &text).unwrap();
        } else {
            let want = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
                panic!(
                    "{name}: {e}; run with UPDATE_GOLDEN=1 to create {}",
                    golden.display()
                )
            });
            let want: Vec<Finding> = serde_json::from_str(&want).unwrap();
            assert_eq!(
                findings,
                want,
                "{name}: findings differ from {}",
                golden.display()
            );
        }

        let lateness_ns = scenario.config.allowed_lateness.as_nanos() as u64;
        let expected = normalized(findings);
        for _ in 0..50 {
            let order = shuffled_within(&scenario.events, lateness_ns, &mut rng);
            let (got, _) = run(&scenario.config, order);
            assert_eq!(
                normalized(got),
                expected,
                "{name}: a shuffle changed the findings"
            );
        }
    }
}
