//! An HTTP answer of the agent as a test reads it (status, headers, body), and the
//! `google.rpc.Status` every refusal carries in the request's content type (README,
//! "Endpoints"), decoded with a prost type of its own rather than the agent's.

use prost::Message;
use serde_json::Value;

/// `google.rpc.Status`, decoded independently of the agent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// Reads `response` whole.
    pub async fn read(response: reqwest::Response) -> Answer {
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response
                .bytes()
                .await
                .expect("reading the agent's answer")
                .to_vec(),
        }
    }

    /// The first value of header `name` (any case), if it is there and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Content-Type`, or "" without one.
    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The message of the `google.rpc.Status` in the body, which must be in `want_type`
    /// (`application/json` or `application/x-protobuf`) and carry a code other than 0 (OK).
    pub fn rpc_message(&self, want_type: &str) -> String {
        assert_eq!(
            self.header("content-type"),
            Some(want_type),
            "error body content type ({} {})",
            self.status,
            self.text()
        );
        if want_type == "application/json" {
            let v: Value = serde_json::from_slice(&self.body)
                .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {}", self.text()));
            assert!(v["code"].is_i64(), "no numeric code in {v}");
            assert_ne!(v["code"], 0, "status code 0 (OK) in an error body: {v}");
            v["message"].as_str().expect("message").to_string()
        } else {
            let s = RpcStatus::decode(&self.body[..]).expect("protobuf google.rpc.Status");
            assert_ne!(s.code, 0, "status code 0 (OK) in an error body");
            s.message
        }
    }
}
