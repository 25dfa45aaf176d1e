//! A network change ends a retry backoff (`docs/reliability.md`, "Sleep, wake, clocks and
//! networks"): the laptop joins a network, gets an address, and data that was waiting minutes goes
//! at once.
//!
//! The test runs in a network namespace of its own (`unshare(CLONE_NEWNET)` on its thread; the
//! runtime's threads, the sink and the agent process inherit it), so adding an address to a
//! veth interface there changes nothing on the machine. Needs root (CAP_SYS_ADMIN and
//! CAP_NET_ADMIN) and `ip` (iproute2).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::process::{agent_command, agent_config, free_port, AgentProcess};
use support::{skip_or_fail, spans, Reply, Sink};

fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves this thread into a new network namespace with loopback up; `false` (and a loud SKIP)
/// when the machine does not allow it outside CI, a failure under CI.
fn private_network() -> bool {
    // SAFETY: unshare(2) with a flag; affects only this thread and what it starts afterwards.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    let usable = rc == 0 && Command::new("ip").arg("-V").output().is_ok();
    if !usable {
        let why = format!(
            "cannot make a private network namespace ({}), or `ip` is missing",
            std::io::Error::last_os_error()
        );
        skip_or_fail("network change test", &why);
        return false;
    }
    ip("link set lo up");
    true
}

#[test]
fn a_new_address_ends_a_long_backoff_but_not_a_retry_after() {
    if !private_network() {
        return;
    }
    // Built after unshare: every runtime thread is in the private namespace.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::start_on("127.0.0.1:0".parse().unwrap(), [Reply::Status(503, None)]).await;
        let port = free_port();
        let config = dir.path().join("config.toml");
        let up = format!(
            "[[destination]]\nname = \"up\"\ntype = \"otlp_http\"\nendpoint = \"{}\"\n\
             batch = {{ linger = \"10ms\" }}\nretry = {{ initial = \"10m\", max = \"1h\" }}\n",
            sink.endpoint()
        );
        let toml = agent_config(port, None, "", &dir.path().join("spool"), &up);
        std::fs::write(&config, toml).unwrap();
        let agent =
            AgentProcess::start(agent_command(&config), port, &dir.path().join("agent.log")).await;
        assert_eq!(agent.post("/v1/traces", spans("offline", 1)).await, 200);
        // The 503 starts a backoff of at least ten minutes.
        sink.wait_first_attempt(Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(sink.items("/v1/traces"), 0);

        // "Joining a network": an interface comes up with an address.
        ip("link add otlptest0 type veth peer name otlptest1");
        ip("addr add 10.203.0.7/24 dev otlptest0");
        ip("link set otlptest0 up");
        ip("link set otlptest1 up");
        let joined = Instant::now();
        assert_eq!(
            sink.wait_items("/v1/traces", 1, Duration::from_secs(10))
                .await,
            1,
            "delivered after the network change, not after the backoff; log:\n{}",
            agent.log_text()
        );
        let took = joined.elapsed();
        assert!(took < Duration::from_secs(5), "{took:?}");
        agent
            .wait_log("the network changed", 1, Duration::from_secs(1))
            .await;
        eprintln!("delivered {took:?} after a new address appeared");

        // A pause the upstream asked for (Retry-After) is its own: a network change keeps it,
        // and ends the (10-minute) backoff once the asked-for time is over.
        sink.script([Reply::Status(503, Some(4))]);
        let attempts = sink.received().len();
        assert_eq!(
            agent.post("/v1/traces", spans("asked-to-wait", 1)).await,
            200
        );
        // An attempt for the second span.
        sink.wait_attempts(attempts + 1, Duration::from_secs(10))
            .await;
        let refused = Instant::now();
        ip("addr add 10.203.0.8/24 dev otlptest0");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            sink.items("/v1/traces"),
            1,
            "a network change cut a Retry-After short; log:\n{}",
            agent.log_text()
        );
        assert_eq!(agent.log_text().matches("the network changed").count(), 1);
        assert_eq!(
            sink.wait_items("/v1/traces", 2, Duration::from_secs(10))
                .await,
            2,
            "the network change seen during Retry-After did not end the backoff after it; log:\n{}",
            agent.log_text()
        );
        let took = refused.elapsed();
        assert!(took >= Duration::from_millis(3900), "{took:?}");
        eprintln!("delivered {took:?} after a 503 with Retry-After: 4 and a network change");
        agent
            .wait_log("the network changed", 2, Duration::from_secs(1))
            .await;
    });
}
