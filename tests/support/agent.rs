//! An agent in-process (`otlp_spool::Agent`) on free loopback ports: its config (a spool in a
//! test's temporary folder, destinations pointing at a [`super::Sink`]), and clients for its
//! OTLP/HTTP and gRPC ports. For the real binary as a child process, see [`super::process`].

use std::net::SocketAddr;
use std::time::Duration;

use super::{Sink, PROTOBUF};

/// A TOML config for an in-process agent on a free loopback port, spooling in `dir`.
pub fn config_toml(dir: &std::path::Path, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ngrpc_listen = \"\"\n[spool]\ndir = \"{}\"\n{extra}",
        dir.display()
    )
}

/// A destination block pointing at `sink`, batching with a short linger so tests are quick.
pub fn destination(name: &str, sink: &Sink, extra: &str) -> String {
    format!(
        "[[destination]]\nname = \"{name}\"\ntype = \"otlp_http\"\nendpoint = \"{}\"\nbatch = {{ linger = \"20ms\" }}\nretry = {{ initial = \"50ms\", max = \"500ms\" }}\ntimeout = \"2s\"\n{extra}\n",
        sink.endpoint()
    )
}

pub async fn start_agent(toml: &str) -> otlp_spool::Agent {
    let config = otlp_spool::config::Config::parse(toml).expect("test config parses");
    otlp_spool::Agent::start(config)
        .await
        .expect("agent starts")
}

/// POSTs `body` to the agent; returns the status and body text.
pub async fn post(
    agent_addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut req = client.post(format!("http://{agent_addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.body(body).send().await.expect("agent reachable");
    let status = resp.status().as_u16();
    (
        status,
        String::from_utf8_lossy(&resp.bytes().await.unwrap()).into_owned(),
    )
}

/// POSTs a protobuf `body` to `path` (`/v1/traces`…) of the agent's first HTTP port; fails the
/// test unless the agent acknowledges it (200).
pub async fn post_acked(agent: &otlp_spool::Agent, path: &str, body: Vec<u8>) {
    let (status, text) = post(agent.http_addrs()[0], path, &[PROTOBUF], body).await;
    assert_eq!(status, 200, "agent answered {status}: {text}");
}

/// A gRPC endpoint for the agent at `addr` (plain HTTP/2), every call timing out after 10 s
/// unless the caller sets its own timeouts.
pub fn grpc_endpoint(addr: SocketAddr) -> tonic::transport::Endpoint {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
}

/// A connected [`grpc_endpoint`]; panics if the agent does not accept the connection.
pub async fn grpc_channel(addr: SocketAddr) -> tonic::transport::Channel {
    grpc_endpoint(addr)
        .connect()
        .await
        .expect("connecting to the agent's gRPC port")
}
