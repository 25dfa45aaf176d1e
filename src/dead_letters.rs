//! The `otlp-spool dead-letters` operations as JSON documents over an open spool. A running
//! agent serves them on its OTLP/HTTP listener ([`serve`]); with the agent stopped the CLI opens
//! the spool directory itself and calls the same functions, so both ways answer alike. The
//! spool's lock keeps the two from ever writing at once.
//!
//! Endpoints (`src/receiver/http.rs` admits loopback peers only, behind `server.auth_token`
//! when one is set):
//! - `GET /dead-letters`: `{"dead_letters": [letter, …], "capped_records", "capped_items"}`,
//!   newest first. A letter: `id`, `destination`, `signal`, `received_ms` (when the agent got
//!   the data), `dead_lettered_ms` (when the upstream refused it), `status` (HTTP, `null` if it
//!   was never sent), `message` (the upstream's), `reason` (the whole error), `items`, `bytes`,
//!   `seqs`, `replay_of`, `replays`, `replay_pending`.
//! - `GET /dead-letters/<id>`: the letter and its `payload` as OTLP/JSON (404 if not held).
//!   Dead letters keep no request headers, and endpoint credentials in `reason` are masked.
//! - `POST /dead-letters/replay`, `POST /dead-letters/purge`, with `{"ids": [..]}` or
//!   `{"all": true}`: what was replayed (`replayed`, `unknown`, `not_routed`) or purged
//!   (`purged`, `unknown`, `bytes`).
//!
//! Nothing here sends data or touches cursors: replay only marks letters for their
//! destination's worker (see `src/spool/dead_letters.rs`).

use serde_json::{json, Value};

use crate::otlp::json::protobuf_to_json_value;
use crate::spool::{Selection, Spool};

/// The longest replay or purge request body read.
pub const MAX_REQUEST_BODY: usize = 1 << 20;

/// Every dead letter held, newest first, and what the cap deleted.
pub fn list(spool: &Spool) -> Result<Value, String> {
    let mut letters = spool.dead_letters()?;
    letters.reverse();
    let usage = spool.usage();
    Ok(json!({
        "dead_letters": letters,
        "capped_records": usage.dead_letter_capped_records,
        "capped_items": usage.dead_letter_capped_items,
    }))
}

/// Dead letter `id` with its payload as OTLP/JSON; `None` if it is not held. A payload that is
/// not OTLP of its signal (refused because of that) is described instead.
pub fn show(spool: &Spool, id: u64) -> Result<Option<Value>, String> {
    let Some((letter, payload)) = spool.dead_letter_payload(id)? else {
        return Ok(None);
    };
    let decoded = match letter.info.signal() {
        Some(signal) => protobuf_to_json_value(signal, &payload).map_err(|e| e.to_string()),
        None => Err(format!("unknown signal {:?}", letter.info.signal)),
    };
    let mut doc = serde_json::to_value(&letter).expect("a letter serializes");
    match decoded {
        Ok(payload) => doc["payload"] = payload,
        Err(why) => doc["payload_error"] = json!(why),
    }
    Ok(Some(doc))
}

pub async fn replay(spool: &Spool, selection: &Selection) -> Result<Value, String> {
    let replayed = spool.replay_dead_letters(selection).await?;
    Ok(serde_json::to_value(replayed).expect("a replay result serializes"))
}

pub async fn purge(spool: &Spool, selection: &Selection) -> Result<Value, String> {
    let purged = spool.purge_dead_letters(selection).await?;
    Ok(serde_json::to_value(purged).expect("a purge result serializes"))
}

/// The body of a replay or purge request.
pub fn selection_body(selection: &Selection) -> Value {
    match selection {
        Selection::All => json!({ "all": true }),
        Selection::Ids(ids) => json!({ "ids": ids }),
    }
}

fn parse_selection(body: &[u8]) -> Result<Selection, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| {
        format!("the body is not JSON ({e}); send {{\"ids\": [..]}} or {{\"all\": true}}")
    })?;
    if doc["all"] == json!(true) {
        return Ok(Selection::All);
    }
    let ids = doc["ids"]
        .as_array()
        .and_then(|ids| ids.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
        .ok_or("send {\"ids\": [<dead letter id>, …]} or {\"all\": true}")?;
    Ok(Selection::Ids(ids))
}

/// Answers one dead-letter request (`path` starts with `/dead-letters`): the HTTP status and
/// the JSON document (`{"error": …}` for failures).
pub async fn serve(spool: &Spool, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let error = |status, message: String| (status, json!({ "error": message }));
    let rest = path.strip_prefix("/dead-letters").unwrap_or(path);
    let answer = match (method, rest) {
        ("GET", "" | "/") => list(spool).map(|doc| (200, doc)),
        ("POST", "/replay" | "/purge") => match parse_selection(body) {
            Ok(selection) if rest == "/replay" => replay(spool, &selection).await,
            Ok(selection) => purge(spool, &selection).await,
            Err(why) => return error(400, why),
        }
        .map(|doc| (200, doc)),
        ("GET", id) => match id.trim_start_matches('/').parse::<u64>() {
            Ok(id) => match show(spool, id) {
                Ok(Some(doc)) => Ok((200, doc)),
                Ok(None) => return error(404, format!("no dead letter {id}")),
                Err(e) => Err(e),
            },
            Err(_) => return error(404, format!("no such path {path:?}")),
        },
        _ => {
            return error(
                405,
                format!(
                    "{method} {path} is not served: GET /dead-letters[/<id>], POST \
                     /dead-letters/replay or /dead-letters/purge"
                ),
            )
        }
    };
    answer.unwrap_or_else(|e| error(500, e))
}
