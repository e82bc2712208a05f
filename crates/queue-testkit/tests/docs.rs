//! The documentation states the memory backend's capability table as the code has it.

use queue_core::{Backend, MemoryBackend};

#[test]
fn capabilities_doc_matches_the_memory_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/capabilities.md");
    let doc = std::fs::read_to_string(path).expect("docs/capabilities.md exists");
    let rows: Vec<Vec<String>> = doc
        .lines()
        .filter(|line| line.starts_with('|') && !line.starts_with("| ---"))
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_owned())
                .collect()
        })
        .collect();
    let header = &rows[0];
    let column = header
        .iter()
        .position(|h| h == "memory")
        .expect("a memory column");
    let backend = MemoryBackend::new();
    for (feature, value) in backend.capabilities().to_markdown_rows() {
        let row = rows
            .iter()
            .find(|row| row[0] == feature)
            .unwrap_or_else(|| panic!("docs/capabilities.md has no row {feature:?}"));
        assert_eq!(row[column], value, "memory column of {feature:?}");
    }
}
