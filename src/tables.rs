//! What `otlp-spool status` and `otlp-spool dead-letters` print for a person: rendered from the
//! JSON documents the agent answers (`/status`, `/dead-letters`), fitted to a terminal `width`.
//!
//! Tables are comfy-table's: it sizes the columns from their contents and wraps the widest
//! cells (the last error, an upstream's message) to fit `width`; a row is at most
//! [`MAX_ROW_LINES`] lines, the rest cut with `…` (the whole text stays in `--json`). Each
//! destination in trouble ends with one line saying what to do: the `advice` the agent
//! computed for it (`src/observe.rs`).
//!
//! Pure: no I/O and no clock (ages and times come from the document), so the output is a
//! function of the document and the width (`tests/status_render.rs` holds it to golden files).

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use comfy_table::{
    CellAlignment, ColumnConstraint, ContentArrangement, LineStyle, Row, Table, TableStyle,
};
use serde_json::Value;

use crate::observe::split_advice;

/// The most lines a wrapped row takes in a table.
pub const MAX_ROW_LINES: usize = 4;

/// No borders: columns apart by their padding, a rule of `-` under the header.
const STYLE: TableStyle =
    TableStyle::new().header_separator(LineStyle::none().fill('-').junction(' '));

/// A table laid out to `width` in [`STYLE`], numeric columns (`right`) aligned right.
fn table(width: u16, header: &[&str], right: &[usize]) -> Table {
    let mut table = Table::new();
    table
        .load_style(STYLE)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(width)
        .set_truncation_indicator("…")
        .set_header(header.to_vec());
    for (i, column) in table.column_iter_mut().enumerate() {
        // With the rule's junction, two spaces between columns; none before the first.
        column.set_padding((0, 1));
        if right.contains(&i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

fn add_row(table: &mut Table, cells: Vec<String>) {
    let mut row = Row::from(cells);
    row.max_height(MAX_ROW_LINES);
    table.add_row(row);
}

/// comfy-table pads every line to the table's width; trailing spaces only get in the way.
fn push_table(out: &mut String, table: &Table) {
    for line in table.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// `text` wrapped to `width`, continuation lines indented.
fn wrapped(text: &str, width: u16) -> String {
    // Never at a hyphen: commands such as `otlp-spool dead-letters list` stay whole.
    let options = textwrap::Options::new(usize::from(width).max(20))
        .subsequent_indent("  ")
        .word_splitter(textwrap::WordSplitter::NoHyphenation);
    textwrap::fill(text, options)
}

/// A time in ms since the epoch as UTC, to the second (`2026-12-03 16:18:18`); `-` when
/// unknown.
pub fn time(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |ms| {
        let rfc3339 =
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string();
        rfc3339.trim_end_matches('Z').replacen('T', " ", 1)
    })
}

fn count(v: &Value) -> String {
    v.as_u64().map_or("-".into(), |n| n.to_string())
}

fn mib(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0) / f64::from(1 << 20)
}

/// A duration to its two largest units: `45s`, `30m 5s`, `1h 30m`, `2d 3h`.
pub fn age(seconds: u64) -> String {
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let parts: Vec<String> = units
        .iter()
        .scan(seconds, |left, &(unit, size)| {
            let n = *left / size;
            *left %= size;
            Some((n, unit))
        })
        .skip_while(|&(n, unit)| n == 0 && unit != "s")
        .take(2)
        .filter(|&(n, _)| n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if parts.is_empty() {
        "0s".into()
    } else {
        parts.join(" ")
    }
}

/// The `status` document, for a person.
pub fn status(v: &Value, width: u16) -> String {
    let s = &v["spool"];
    let mut lines = vec![
        format!(
            "otlp-spool {}  up {}",
            v["version"].as_str().unwrap_or("?"),
            age(v["uptime_seconds"].as_u64().unwrap_or(0))
        ),
        format!(
            "spool {}: {} records, {:.1} MiB of {:.0} MiB (on disk {:.1} MiB), dead letters {}",
            s["dir"].as_str().unwrap_or("?"),
            s["records"],
            mib(&s["bytes"]),
            mib(&s["max_bytes"]),
            mib(&s["disk_bytes"]),
            s["dead_letter_records"]
        ),
    ];
    let streams: Vec<String> = ["traces", "metrics", "logs", "dead_letter"]
        .iter()
        .map(|name| {
            let st = &s["streams"][name];
            format!(
                "{name} {} segments {:.1} MiB",
                st["segments"],
                mib(&st["disk_bytes"])
            )
        })
        .collect();
    lines.push(format!("spool files: {}", streams.join(", ")));
    if let Some(damaged) = s["damaged_records"].as_u64().filter(|&n| n > 0) {
        lines.push(format!(
            "SPOOL DAMAGE: {damaged} damaged records skipped (their data is lost; the rest is \
             delivered); check the disk"
        ));
    }
    if let Some(error) = s["storage_error"].as_str() {
        lines.push(format!(
            "STORAGE FAILING: {error}; refusing new data (503) until the spool reopens by itself"
        ));
    }
    if let Some(aside) = s["quarantined"].as_str() {
        lines.push(format!(
            "CORRUPT SPOOL moved aside at this start, to {aside} (not read again: keep it for a \
             bug report, then delete it)"
        ));
    }
    let t = &s["truncated"];
    if t.is_object() {
        lines.push(format!(
            "SPOOL LOST WRITES before this start (log truncated or damaged): sequences after {} \
             up to {} that were not yet delivered are gone",
            t["found_seq"], t["expected_seq"]
        ));
    }
    if let Some(capped) = s["dead_letter_capped_records"].as_u64().filter(|&n| n > 0) {
        lines.push(format!(
            "DEAD LETTERS DROPPED: the dead-letter store is bounded (spool.max_bytes / 16) and \
             deleted its {capped} oldest letters ({} items) before they were purged or \
             replayed",
            s["dead_letter_capped_items"]
        ));
    }
    let r = &v["received"];
    lines.push(format!(
        "received items: traces {}  metrics {}  logs {}",
        r["traces"]["items"], r["metrics"]["items"], r["logs"]["items"]
    ));
    let d = &v["dropped"];
    lines.push(format!(
        "dropped items: full {}  expired {}  dead-lettered {}",
        d["full_items"], d["expired_items"], d["dead_letter_items"]
    ));
    if let Some(held) = s["dead_letter_records"].as_u64().filter(|&n| n > 0) {
        let replaying = s["dead_letter_replays_pending"].as_u64().unwrap_or(0);
        let mut line = format!(
            "dead letters: {held} held ({:.1} MiB)",
            mib(&s["dead_letter_bytes"])
        );
        if replaying > 0 {
            let _ = write!(line, ", {replaying} waiting to be replayed");
        }
        line.push_str("; `otlp-spool dead-letters list` shows what was refused and why");
        lines.push(line);
    }
    let mut out = String::new();
    for line in lines {
        let _ = writeln!(out, "{}", wrapped(&line, width));
    }
    if let Some(holding) = v["holding"].as_str() {
        let _ = writeln!(out, "\n{}", wrapped(holding, width));
    }
    for dest in v["destinations"].as_array().into_iter().flatten() {
        out.push('\n');
        destination(&mut out, dest, width);
    }
    out
}

/// One destination: its name line, a row per signal, and what to do if it is in trouble.
fn destination(out: &mut String, dest: &Value, width: u16) {
    let endpoint = dest["endpoint"].as_str().unwrap_or("");
    let _ = writeln!(
        out,
        "{}",
        wrapped(
            &format!(
                "destination {} ({}) {endpoint}",
                dest["name"].as_str().unwrap_or("?"),
                dest["type"].as_str().unwrap_or("?"),
            ),
            width
        )
    );
    let mut rows = table(
        width,
        &[
            "signal",
            "pending",
            "oldest",
            "sent",
            "attempts",
            "state",
            "last error",
        ],
        &[1, 2, 3, 4],
    );
    let mut advice: Vec<&str> = Vec::new();
    for (signal, w) in dest["signals"].as_object().into_iter().flatten() {
        let oldest = w["oldest_pending_age_seconds"]
            .as_f64()
            .map_or("-".into(), |a| age(a.round() as u64));
        // `retry` is "ready", or an object keyed by the state.
        let state = match &w["retry"] {
            Value::Object(o) => o.keys().next().cloned().unwrap_or_default(),
            other => other.as_str().unwrap_or("ready").to_string(),
        };
        // The advice is printed once below the table, and the endpoint is on the line above.
        let error: String = w["last_error"].as_str().map_or("-".into(), |e| {
            let error = split_advice(e).0;
            match endpoint {
                "" => error.to_string(),
                endpoint => error.replacen(endpoint, "…", 1),
            }
        });
        add_row(
            &mut rows,
            vec![
                signal.clone(),
                count(&w["pending_records"]),
                oldest,
                count(&w["sent_items"]),
                count(&w["attempts"]),
                state,
                error,
            ],
        );
        if let Some(a) = w["advice"].as_str() {
            if !advice.contains(&a) {
                advice.push(a);
            }
        }
    }
    push_table(out, &rows);
    let rw = &dest["remote_write"];
    if rw.is_object() {
        let ignored: Vec<String> = rw["points_ignored"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n.as_u64().is_some_and(|n| n > 0))
            .map(|(why, n)| format!("{n} {}", why.replace('_', " ")))
            .collect();
        let ignored = match ignored.is_empty() {
            true => "none".to_string(),
            false => ignored.join(", "),
        };
        let line = format!(
            "remote write: {} series in the last request, {} aggregated away (drop_labels); \
             points ignored: {ignored}; gauge points that kept a dropped label: {}",
            count(&rw["series_written"]),
            count(&rw["series_aggregated_away"]),
            count(&rw["gauge_points_kept_labels"]),
        );
        let _ = writeln!(out, "{}", wrapped(&line, width));
    }
    for a in advice {
        let _ = writeln!(out, "{}", wrapped(&format!("what to do: {a}"), width));
    }
}

/// The `dead_letters` of a `/dead-letters` document, one row each. Nine fields do not fit 80
/// columns side by side, so the two times share a column (received over refused, to the
/// minute), as do items and bytes; the message wraps in what is left.
pub fn dead_letters(letters: &[Value], width: u16) -> String {
    let mut rows = table(
        width,
        &[
            "id",
            "destination",
            "signal",
            "received\nrefused (UTC)",
            "status",
            "items\nbytes",
            "message",
        ],
        &[0, 4, 5],
    );
    let minute = |ms: &Value| {
        let mut t = time(ms.as_u64());
        t.truncate("2026-12-03 16:18".len());
        t
    };
    for letter in letters {
        let mut message = letter["message"]
            .as_str()
            .or(letter["reason"].as_str())
            .unwrap_or("-")
            .to_string();
        if letter["replay_pending"] == Value::Bool(true) {
            message.insert_str(0, "[replay pending] ");
        }
        add_row(
            &mut rows,
            vec![
                count(&letter["id"]),
                letter["destination"].as_str().unwrap_or("?").to_string(),
                letter["signal"].as_str().unwrap_or("?").to_string(),
                format!(
                    "{}\n{}",
                    minute(&letter["received_ms"]),
                    minute(&letter["dead_lettered_ms"])
                ),
                count(&letter["status"]),
                format!("{}\n{}", count(&letter["items"]), count(&letter["bytes"])),
                message,
            ],
        );
    }
    // Only the message wraps.
    for column in rows.column_iter_mut().take(6) {
        column.set_constraint(ColumnConstraint::ContentWidth);
    }
    let mut out = String::new();
    push_table(&mut out, &rows);
    out
}

/// One dead letter (a `/dead-letters/<id>` document): what it is, then its payload as
/// OTLP/JSON.
pub fn dead_letter(doc: &Value) -> String {
    let text = |key: &str| doc[key].as_str().unwrap_or("-").to_string();
    let seqs = &doc["seqs"];
    let mut fields = vec![
        ("destination", text("destination")),
        ("signal", text("signal")),
        ("received", time(doc["received_ms"].as_u64()) + " UTC"),
        ("refused", time(doc["dead_lettered_ms"].as_u64()) + " UTC"),
        ("status", count(&doc["status"])),
        ("message", text("message")),
        ("error", text("reason")),
        ("items", count(&doc["items"])),
        ("bytes", count(&doc["bytes"])),
        ("records", format!("{}..={}", seqs[0], seqs[1])),
    ];
    if let Some(of) = doc["replay_of"].as_u64() {
        let replays = count(&doc["replays"]);
        fields.push((
            "replay of",
            format!("{of} (refused in {replays} replay(s))"),
        ));
    }
    if doc["replay_pending"] == Value::Bool(true) {
        fields.push(("replay", "pending".into()));
    }
    let mut out = format!("dead letter {}\n", doc["id"]);
    for (name, value) in fields {
        let _ = writeln!(out, "  {name:<12} {value}");
    }
    match doc.get("payload") {
        Some(payload) => {
            let _ = writeln!(
                out,
                "payload (OTLP/JSON):\n{}",
                serde_json::to_string_pretty(payload).expect("json")
            );
        }
        None => {
            let _ = writeln!(out, "payload: {}", text("payload_error"));
        }
    }
    out
}
