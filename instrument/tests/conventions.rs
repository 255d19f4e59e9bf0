//! The Rust example of `schema/CONVENTIONS.md` (section 4, "With `toctou-instrument`") is
//! `examples/reserve.rs`, which cargo compiles: this keeps the two identical, so the
//! documented code is code that builds.

use std::path::Path;

#[test]
fn conventions_rust_example_is_examples_reserve_rs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("../schema/CONVENTIONS.md")).unwrap();
    let example = std::fs::read_to_string(root.join("examples/reserve.rs")).unwrap();
    let section = doc
        .split("#### With `toctou-instrument`")
        .nth(1)
        .expect("CONVENTIONS.md has a \"With `toctou-instrument`\" section");
    let block = section
        .split("```rust\n")
        .nth(1)
        .and_then(|b| b.split("```\n").next())
        .expect("a rust code block in that section");
    assert_eq!(
        block, example,
        "CONVENTIONS.md's example and instrument/examples/reserve.rs differ"
    );
}
