//! Hostile request bodies against an in-process agent over real HTTP: values nested absurdly
//! deep, in OTLP/JSON (plain and gzip) and in protobuf. Each must get a 400 naming the problem —
//! not a crash, a hang or a 200 — and leave nothing in the spool, while a shallow request built
//! the same way is still accepted (so the refusal is about depth, not about the builders here).

mod support;

use otlp_spool::otlp::json::MAX_JSON_DEPTH;
use support::{config_toml, gzip, post, start_agent, JSON, PROTOBUF};

/// How values nest: `{"kvlistValue": {"values": [{"key", "value": …}]}}` or
/// `{"arrayValue": {"values": […]}}`.
#[derive(Debug, Clone, Copy)]
enum Nesting {
    Kvlist,
    Array,
}

/// An OTLP/JSON log request whose one record's body nests `levels` AnyValues.
fn nested_json(nesting: Nesting, levels: usize) -> Vec<u8> {
    let (open, close) = match nesting {
        Nesting::Kvlist => (r#"{"kvlistValue":{"values":[{"key":"k","value":"#, "}]}}"),
        Nesting::Array => (r#"{"arrayValue":{"values":["#, "]}}"),
    };
    let value = format!(
        r#"{}{{"stringValue":"leaf"}}{}"#,
        open.repeat(levels),
        close.repeat(levels)
    );
    format!(r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"body":{value}}}]}}]}}]}}"#)
        .into_bytes()
}

/// The same request as protobuf, encoded by hand from the inside out in one pass: building it
/// with the prost types would need a stack as deep as the nesting, as decoding it does.
fn nested_protobuf(nesting: Nesting, levels: usize) -> Vec<u8> {
    /// The encoding back to front: fields are prepended around what is already there.
    struct Reversed(Vec<u8>);
    impl Reversed {
        fn prepend(&mut self, bytes: &[u8]) {
            self.0.extend(bytes.iter().rev());
        }
        /// Makes everything so far the value of length-delimited field `tag` (wire type 2).
        fn wrap(&mut self, tag: u8) {
            let mut header = vec![tag << 3 | 2];
            prost::encoding::encode_varint(self.0.len() as u64, &mut header);
            self.prepend(&header);
        }
    }
    let mut out = Reversed(Vec::new());
    out.prepend(b"leaf");
    out.prepend(&[1 << 3 | 2, 4]); // AnyValue.string_value = "leaf"
    for _ in 0..levels {
        match nesting {
            Nesting::Kvlist => {
                out.wrap(2); // KeyValue.value
                out.prepend(&[1 << 3 | 2, 1, b'k']); // KeyValue.key = "k"
                out.wrap(1); // KeyValueList.values
                out.wrap(6); // AnyValue.kvlist_value
            }
            Nesting::Array => {
                out.wrap(1); // ArrayValue.values
                out.wrap(5); // AnyValue.array_value
            }
        }
    }
    out.wrap(5); // LogRecord.body
    out.wrap(2); // ScopeLogs.log_records
    out.wrap(2); // ResourceLogs.scope_logs
    out.wrap(1); // ExportLogsServiceRequest.resource_logs
    out.0.reverse();
    out.0
}

#[tokio::test]
async fn deeply_nested_json_is_refused_naming_where_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&config_toml(dir.path(), "")).await;
    let addr = agent.http_addrs()[0];
    let gzip_header = ("content-encoding", "gzip");

    for nesting in [Nesting::Kvlist, Nesting::Array] {
        // Past serde_json's parser limit (128 levels): located by line and column.
        for (body, headers) in [
            (nested_json(nesting, 100_000), vec![JSON]),
            (
                gzip(&nested_json(nesting, 100_000)),
                vec![JSON, gzip_header],
            ),
        ] {
            let (status, text) = post(addr, "/v1/logs", &headers, body).await;
            assert_eq!(status, 400, "{nesting:?} 100k deep {headers:?}: {text}");
            assert!(
                text.contains(&format!("more than {MAX_JSON_DEPTH} levels deep"))
                    && text.contains("line 1, column"),
                "{nesting:?}: {text}"
            );
        }
    }

    // Past MAX_JSON_DEPTH but within the parser's limit: located by its JSON path.
    let (status, text) = post(addr, "/v1/logs", &[JSON], nested_json(Nesting::Kvlist, 15)).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("resourceLogs[0].scopeLogs[0].logRecords[0].body.kvlistValue.values[0]")
            && text.contains(&format!("more than {MAX_JSON_DEPTH} levels deep")),
        "{text}"
    );
    assert_eq!(agent.spool().usage().records, 0, "nothing stored");

    // The deepest kvlist nesting the limit admits (the body is at level 8, each level adds 4).
    let (status, text) = post(addr, "/v1/logs", &[JSON], nested_json(Nesting::Kvlist, 14)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(agent.spool().usage().records, 1);
    agent.shutdown().await;
}

#[tokio::test]
async fn deeply_nested_protobuf_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&config_toml(dir.path(), "")).await;
    let addr = agent.http_addrs()[0];

    for nesting in [Nesting::Kvlist, Nesting::Array] {
        let body = nested_protobuf(nesting, 100_000);
        // The reply is a protobuf google.rpc.Status; its message is plain text within it.
        let (status, text) = post(addr, "/v1/logs", &[PROTOBUF], body).await;
        assert_eq!(status, 400, "{nesting:?}: {text}");
        // prost's decoder stops at 100 nested messages.
        assert!(
            text.contains("ExportLogsServiceRequest") && text.contains("recursion limit"),
            "{nesting:?}: {text}"
        );
    }
    assert_eq!(agent.spool().usage().records, 0, "nothing stored");

    // The same builder, shallow: accepted, so the refusals above were about depth.
    for nesting in [Nesting::Kvlist, Nesting::Array] {
        let (status, text) = post(addr, "/v1/logs", &[PROTOBUF], nested_protobuf(nesting, 5)).await;
        assert_eq!(status, 200, "{nesting:?}: {text}");
    }
    assert_eq!(agent.spool().usage().records, 2);
    agent.shutdown().await;
}
