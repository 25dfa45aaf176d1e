//! `otlp-spool status` as a person reads it, held to golden files: the table rendered from a
//! fixed `/status` document (`tests/golden/status-<case>.json`: a healthy agent, whose
//! remote-write destination shows its `drop_labels` counts; a destination in backoff with a
//! 300-character error and dead letters the bound dropped; one whose credentials are refused)
//! at 80 and 200 columns (`tests/golden/status-<case>-<width>.txt`).
//! Besides the goldens: no line is wider than asked, the columns of each table line up (every
//! row's cells start where the header's do), and each destination in trouble ends with its
//! advice. `UPDATE_GOLDEN=1 cargo test --test status_render` rewrites the goldens; read the
//! diff before committing it.

use std::path::PathBuf;

use serde_json::Value;

const CASES: [&str; 3] = ["healthy", "backoff", "auth_failed"];
const WIDTHS: [u16; 2] = [80, 200];

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn document(case: &str) -> Value {
    let path = golden(&format!("status-{case}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Where each column of a table starts: the runs of `-` in its header rule.
fn column_starts(rule: &str) -> Vec<usize> {
    let bytes = rule.as_bytes();
    (0..bytes.len())
        .filter(|&i| bytes[i] == b'-' && (i == 0 || bytes[i - 1] == b' '))
        .collect()
}

#[test]
fn status_renders_as_its_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for case in CASES {
        let doc = document(case);
        for width in WIDTHS {
            let rendered = otlp_spool::tables::status(&doc, width);
            let path = golden(&format!("status-{case}-{width}.txt"));
            if update {
                std::fs::write(&path, &rendered).unwrap();
            }
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            if rendered != want {
                mismatches.push(format!("{} differs; rendered:\n{rendered}", path.display()));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n\n"));
}

#[test]
fn lines_fit_and_columns_line_up() {
    for case in CASES {
        let doc = document(case);
        for width in WIDTHS {
            let rendered = otlp_spool::tables::status(&doc, width);
            let lines: Vec<&str> = rendered.lines().collect();
            for line in &lines {
                assert!(
                    line.chars().count() <= usize::from(width),
                    "{case} at {width}: a line of {} characters:\n{line}",
                    line.chars().count()
                );
            }
            let mut tables = 0;
            for (i, line) in lines.iter().enumerate() {
                if !line.starts_with("signal ") {
                    continue;
                }
                tables += 1;
                let starts = column_starts(lines[i + 1]);
                assert_eq!(starts.len(), 7, "{case} at {width}: {}", lines[i + 1]);
                // Every row line has a space just before each column's start (numbers are
                // right-aligned, so a cell may start later), and the header's names start there.
                for name in ["pending", "oldest", "state", "last error"] {
                    let at = line.find(name).unwrap();
                    assert!(starts.iter().any(|&s| s <= at), "{case}: {name}");
                }
                let below = ["what to do", "destination", "remote write"];
                for row in lines[i + 2..]
                    .iter()
                    .take_while(|l| !l.is_empty() && !below.iter().any(|b| l.starts_with(b)))
                {
                    for &start in &starts[1..] {
                        assert!(
                            row.len() <= start || row.as_bytes()[start - 1] == b' ',
                            "{case} at {width}: a cell runs into column {start}:\n{row}\nin\n{rendered}"
                        );
                    }
                }
            }
            assert_eq!(
                tables,
                doc["destinations"].as_array().unwrap().len(),
                "{case}: a table per destination"
            );
        }
    }
}

#[test]
fn a_destination_in_trouble_ends_with_what_to_do_and_the_whole_error_stays_in_json() {
    for (case, advice) in [
        ("backoff", "check its endpoint and the network"),
        ("auth_failed", "run `aws sso login --profile dev`"),
    ] {
        let doc = document(case);
        for width in WIDTHS {
            let rendered = otlp_spool::tables::status(&doc, width);
            let what_to_do: Vec<&str> = rendered
                .lines()
                .filter(|l| l.starts_with("what to do: "))
                .collect();
            assert_eq!(what_to_do.len(), 1, "{case} at {width}:\n{rendered}");
            let paragraph: String = rendered
                .split("what to do: ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            assert!(paragraph.contains(advice), "{case} at {width}:\n{rendered}");
        }
    }
    let doc = document("backoff");
    let error = doc["destinations"][0]["signals"]["logs"]["last_error"]
        .as_str()
        .unwrap();
    assert_eq!(error.chars().count(), 300);
    let narrow = otlp_spool::tables::status(&doc, 80);
    assert!(
        narrow.contains('…'),
        "a long error is cut in the table:\n{narrow}"
    );
    assert!(
        !narrow.contains(&error[error.len() - 40..]),
        "its end is not shown at 80 columns:\n{narrow}"
    );
    let healthy = otlp_spool::tables::status(&document("healthy"), 80);
    assert!(!healthy.contains("what to do"), "{healthy}");
}

/// Into a pipe (`otlp-spool status | grep …`) the CLI asks for no width limit: nothing wraps, so
/// each summary line and the table's error cell are whole on one line.
#[test]
fn unlimited_width_wraps_nothing() {
    let rendered = otlp_spool::tables::status(&document("backoff"), u16::MAX);
    assert!(
        rendered.lines().any(|l| l.starts_with("logs ")
            && l.contains("HTTP 503 Service Unavailable")
            && l.contains("delayed connect error: Connection refused")),
        "the error cell wrapped:\n{rendered}"
    );
    assert!(
        rendered
            .lines()
            .any(|l| l.starts_with("DEAD LETTERS DROPPED")
                && l.ends_with("before they were purged or replayed")),
        "a summary line wrapped:\n{rendered}"
    );
}
