//! Golden scenarios: OTLP JSON in (testdata/scenarios/*/input.jsonl), findings out
//! (expected.jsonl beside it), through the real `toctou replay` binary. Each scenario is also
//! replayed with its requests shuffled (all of them lie within the allowed lateness) and must
//! give the same findings. `UPDATE_GOLDEN=1 cargo test --test golden` rewrites the expected
//! files; review the diff before committing it.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What each scenario must contain, by kind: the golden files are checked against this too,
/// so that regenerating them cannot quietly bless a wrong answer.
const EXPECTED_KINDS: &[(&str, &[(&str, usize)])] = &[
    ("authz_drift_denied", &[("authz_drift", 1)]),
    ("authz_drift_policy_change", &[("authz_drift", 1)]),
    ("clean", &[]),
    ("duplicate_create", &[("duplicate_use", 1)]),
    ("duplicate_use_idempotency", &[("duplicate_use", 1)]),
    ("k8s_audit_stale_check", &[("stale_check", 1)]),
    ("orphan_check", &[("orphan_check", 1)]),
    ("partial_create", &[("partial_create", 1)]),
    (
        "precedence_unchecked_over_duplicate",
        &[("unchecked_use", 1)],
    ),
    ("stale_check_audit_time", &[("stale_check", 1)]),
    ("stale_check_audit_versions", &[("stale_check", 1)]),
    ("stale_check_versions", &[("stale_check", 1)]),
    ("unchecked_use", &[("unchecked_use", 2)]),
];

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/scenarios")
}

fn replay(input: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_toctou"))
        .arg("replay")
        .arg(input)
        .env("TOCTOU_LOG", "warn")
        .output()
        .expect("running toctou replay");
    assert!(
        out.status.success(),
        "toctou replay {} failed: {}",
        input.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("replay output is UTF-8")
}

/// Findings without the one field that depends on arrival order, keyed by id.
fn normalized(output: &str) -> BTreeMap<String, Value> {
    output
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("a finding per line");
            v.as_object_mut().unwrap().remove("detected_at_ns");
            (v["id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn kinds(output: &str) -> BTreeMap<String, usize> {
    let mut k = BTreeMap::new();
    for v in normalized(output).values() {
        *k.entry(v["kind"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    k
}

#[test]
fn every_scenario_has_an_expectation() {
    let mut dirs: Vec<String> = std::fs::read_dir(scenarios_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let named: Vec<String> = EXPECTED_KINDS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(dirs, named);
}

#[test]
fn scenarios_match_their_golden_findings() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for (name, want) in EXPECTED_KINDS {
        let dir = scenarios_dir().join(name);
        let got = replay(&dir.join("input.jsonl"));
        let want_kinds: BTreeMap<String, usize> =
            want.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        assert_eq!(
            kinds(&got),
            want_kinds,
            "scenario {name}: kinds of findings"
        );
        let expected_path = dir.join("expected.jsonl");
        if update {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with UPDATE_GOLDEN=1)",
                expected_path.display()
            )
        });
        assert_eq!(
            got, expected,
            "scenario {name}: replay output differs from golden"
        );
        // Same input, same output, byte for byte.
        assert_eq!(
            replay(&dir.join("input.jsonl")),
            got,
            "scenario {name}: not reproducible"
        );
    }
}

#[test]
fn shuffled_within_lateness_gives_the_same_findings() {
    let tmp = std::env::temp_dir().join(format!("toctou-golden-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261126);
    for (name, _) in EXPECTED_KINDS {
        let input = scenarios_dir().join(name).join("input.jsonl");
        let in_order = normalized(&replay(&input));
        let text = std::fs::read_to_string(&input).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        for round in 0..5 {
            lines.shuffle(&mut rng);
            let shuffled = tmp.join(format!("{name}-{round}.jsonl"));
            std::fs::write(&shuffled, lines.join("\n") + "\n").unwrap();
            assert_eq!(
                normalized(&replay(&shuffled)),
                in_order,
                "scenario {name}, shuffle {round}: findings differ from in-order replay"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
