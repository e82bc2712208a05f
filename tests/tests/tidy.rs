//! The workspace keeps the shape `docs/architecture.md` describes, checked
//! on every `cargo test`:
//!
//! - every backend crate (a crate whose `lib.rs` exports a `CONNECTOR`)
//!   has the same files, an error classifier with unit tests of its own,
//!   a conformance test that calls the suite macro, and an umbrella
//!   feature of its name that registers its connector;
//! - the memory backend's folder has the same file roles;
//! - the suite's case list (`queue_testkit::cases::CASES`), the case
//!   functions of `crates/queue-testkit/src/cases/` and the case table of
//!   `docs/testing.md` name the same cases;
//! - CI runs `cargo xtask ci`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The files every backend crate has (`docs/architecture.md`). A module
/// grown into a folder counts: `src/consumer/mod.rs` for `src/consumer.rs`.
const BACKEND_FILES: [&str; 8] = [
    "src/lib.rs",
    "src/config.rs",
    "src/backend.rs",
    "src/shared.rs",
    "src/producer.rs",
    "src/consumer.rs",
    "src/admin.rs",
    "src/error.rs",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace root")
        .to_owned()
}

/// Whether the module `file` (`src/x.rs`) is in `dir`, as a file or as a
/// folder (`src/x/mod.rs`).
fn has_module(dir: &Path, file: &str) -> bool {
    let folder = file.strip_suffix(".rs").map(|m| format!("{m}/mod.rs"));
    dir.join(file).exists() || folder.is_some_and(|f| dir.join(f).exists())
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Crates under `crates/` whose `lib.rs` exports a `CONNECTOR`: the
/// backend crates, by (name without `queue-`, path).
fn backend_crates() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root().join("crates")).expect("crates/") {
        let dir = entry.expect("entry").path();
        let lib = dir.join("src/lib.rs");
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if lib.exists() && read(&lib).contains("pub const CONNECTOR") {
            let short = name.strip_prefix("queue-").unwrap_or(&name).to_owned();
            out.push((short, dir));
        }
    }
    out.sort();
    out
}

#[test]
fn every_backend_crate_has_the_shape_of_the_others() {
    let backends = backend_crates();
    assert!(
        backends.iter().any(|(name, _)| name == "redis"),
        "the backend crates are found: {backends:?}"
    );
    let umbrella_toml = read(&root().join("crates/queue/Cargo.toml"));
    let umbrella_lib = read(&root().join("crates/queue/src/lib.rs"));
    for (name, dir) in &backends {
        for file in BACKEND_FILES {
            assert!(has_module(dir, file), "queue-{name} has no {file}");
        }
        let error = read(&dir.join("src/error.rs"));
        assert!(
            error.contains("fn classify("),
            "queue-{name}: src/error.rs has no `classify` function"
        );
        assert!(
            error.contains("#[cfg(test)]") && error.contains("#[test]"),
            "queue-{name}: src/error.rs has no unit tests of its classifier"
        );
        let conformance = dir.join("tests/conformance.rs");
        assert!(
            conformance.exists(),
            "queue-{name} has no tests/conformance.rs"
        );
        assert!(
            read(&conformance).contains("queue_testkit::conformance_suite!("),
            "queue-{name}: tests/conformance.rs does not call the suite macro"
        );
        let feature = format!("{name} = [");
        let feature_line = umbrella_toml
            .lines()
            .find(|l| l.starts_with(&feature))
            .unwrap_or_else(|| panic!("the umbrella has no feature `{name}`"));
        assert!(
            feature_line.contains(&format!("dep:queue-{name}")),
            "the umbrella's feature `{name}` does not enable queue-{name}: {feature_line}"
        );
        let crate_ident = format!("queue_{}", name.replace('-', "_"));
        assert!(
            umbrella_lib.contains(&format!("registry::register({crate_ident}::CONNECTOR)")),
            "the umbrella does not register {crate_ident}::CONNECTOR"
        );
    }
}

#[test]
fn the_memory_backend_has_the_same_file_roles() {
    let memory = root().join("crates/queue-core/src/memory");
    for file in BACKEND_FILES {
        let file = file.trim_start_matches("src/").replace("lib.rs", "mod.rs");
        assert!(
            has_module(&memory, &file),
            "the memory backend has no {file}"
        );
    }
}

/// Names of the public async functions taking a `&Ctx` in the files of
/// `crates/queue-testkit/src/cases/`: the cases written, listed or not.
fn case_functions() -> BTreeSet<String> {
    let dir = root().join("crates/queue-testkit/src/cases");
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(&dir).expect("crates/queue-testkit/src/cases/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "rs") {
            names.extend(
                read(&path)
                    .lines()
                    .filter_map(|l| l.strip_prefix("pub async fn "))
                    .filter(|l| l.contains("(ctx: &Ctx)"))
                    .map(|l| l[..l.find('(').expect("(")].to_owned()),
            );
        }
    }
    names
}

/// Names in the case table of `docs/testing.md` (`| n | \`name\` | ...`).
fn documented_cases() -> BTreeSet<String> {
    let doc = read(&root().join("docs/testing.md"));
    doc.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            (cells.len() >= 2 && cells[0].parse::<u32>().is_ok())
                .then(|| cells[1].trim_matches('`').to_owned())
        })
        .collect()
}

#[test]
fn the_suite_the_cases_and_the_docs_list_the_same_cases() {
    // The suite's tests are generated from this list, so each name in it is
    // a case function (or the testkit does not compile) and a test.
    let listed: BTreeSet<String> = queue_testkit::cases::CASES
        .iter()
        .map(|&name| name.to_owned())
        .collect();
    assert_eq!(
        listed.len(),
        queue_testkit::cases::CASES.len(),
        "a case is listed twice"
    );
    assert!(listed.len() >= 40, "{listed:?}");
    let functions = case_functions();
    assert_eq!(
        listed, functions,
        "the suite's case list and the case functions of the testkit differ"
    );
    let mut expected = listed.clone();
    // Case 36 kills a worker process: it is a process test in tests/.
    expected.insert("crash_recovery".to_owned());
    let documented = documented_cases();
    let missing: Vec<_> = expected.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/testing.md's case table: missing {missing:?}, not in the suite {extra:?}"
    );
}

#[test]
fn ci_runs_the_xtask_ci_command() {
    let ci = read(&root().join(".ci/run"));
    assert!(
        ci.lines()
            .any(|l| l.trim_start().starts_with("cargo xtask ci")),
        ".ci/run does not run `cargo xtask ci`"
    );
    let readme = read(&root().join("README.md"));
    assert!(
        readme.contains("cargo xtask test"),
        "the README names the test command"
    );
}
