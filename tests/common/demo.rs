//! Reading what `toctou demo` printed: its run tag (`demo run <tag>: ...`, in every resource
//! name of the run) and its table of what happened against what toctou found, per kind.

use std::collections::BTreeMap;

/// The finding kinds, as the demo's table lists them.
pub use toctou_demo::KINDS;

/// The run tag (`demo run <tag>: ...`) in the demo's output.
pub fn run_tag(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("demo run "))
        .and_then(|l| l.split(':').next())
        .unwrap_or_else(|| panic!("no run tag in:\n{stdout}"))
        .to_string()
}

/// The run tag and the table (kind -> (happened, found)) in the demo's output.
pub fn parse(stdout: &str) -> (String, BTreeMap<String, (u64, u64)>) {
    let run = run_tag(stdout);
    let mut table = BTreeMap::new();
    for line in stdout.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() >= 3 && KINDS.contains(&cols[0]) {
            if let (Ok(happened), Ok(found)) = (cols[1].parse(), cols[2].parse()) {
                table.insert(cols[0].to_string(), (happened, found));
            }
        }
    }
    (run, table)
}
