//! A real Prometheus server for remote-write tests (Debian package `prometheus`, installed by
//! `scripts/install-test-deps.sh`): started on a free loopback port with
//! `--web.enable-remote-write-receiver` and a temporary TSDB, queried over its HTTP API, killed
//! and reaped on drop. Without the binary a test prints a loud SKIP (a failure under CI).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::free_port;
use super::skip_or_fail;

/// A series' labels (`__name__` included).
pub type Labels = BTreeMap<String, String>;

fn prometheus_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OTLP_SPOOL_TEST_PROMETHEUS") {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

/// The binary, or `None` after a loud SKIP (a failure under CI).
fn require_prometheus(test: &str) -> Option<PathBuf> {
    let bin = prometheus_binary();
    if bin.is_none() {
        let msg = format!(
            "prometheus not found (PATH or $OTLP_SPOOL_TEST_PROMETHEUS): install the Debian package \
             `prometheus` (scripts/install-test-deps.sh does) to run {test}"
        );
        skip_or_fail(test, &msg);
    }
    bin
}

pub struct Prometheus {
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
    child: tokio::process::Child,
}

impl Prometheus {
    /// A started Prometheus for `test`, or `None` after a loud SKIP (a failure under CI).
    pub async fn start_for(test: &str) -> Option<Prometheus> {
        Some(Prometheus::start(&require_prometheus(test)?).await)
    }

    async fn start(bin: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            "global:\n  scrape_interval: 1h\nscrape_configs: []\n",
        )
        .unwrap();
        let port = free_port();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = tokio::process::Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--web.enable-remote-write-receiver")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("starting prometheus");
        let prom = Prometheus { addr, dir, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = reqwest::get(format!("http://{addr}/-/ready")).await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prom;
            }
            if Instant::now() > deadline {
                panic!("prometheus did not become ready:\n{}", prom.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    pub fn write_url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    /// An instant query at `time_ms`: each series' labels and value.
    pub async fn query(&self, query: &str, time_ms: i64) -> Vec<(Labels, f64)> {
        let url = format!("http://{}/api/v1/query", self.addr);
        let time = format!("{:.3}", time_ms as f64 / 1000.0);
        let resp: Value = reqwest::Client::new()
            .get(url)
            .query(&[("query", query), ("time", time.as_str())])
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap();
        assert_eq!(resp["status"], "success", "{query}: {resp}");
        resp["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let value = r["value"][1].as_str().unwrap().parse::<f64>().unwrap();
                (labels, value)
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Killed and reaped here, so no zombie outlives the test.
        let _ = self.child.start_kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
