//! Times what otlp-spool's `Spool::open` does on a spool directory, outside the agent: sled's own
//! open (recovery), the usage scan (every value of every record tree), a keys-only pass, and
//! `first`/`last`, printing VmRSS after each. Modes (second argument):
//! - (none): open, value scan, keys-only scan, first/last
//! - `keys`: open, keys-only scan first, first/last
//! - `drain`: what an export worker does (4 MiB range reads, remove, flush) with no scan first
//! - `scandrain`: a full value scan first (as `Spool::open` does), then the drain
//! - `fill BYTES [SEGMENT_SIZE [RECORD]]`: on a new directory, insert BYTES of RECORD-byte
//!   (default 36,000, a 100-span request) records into
//!   `traces` (a flush every 16, as the group commit does), printing VmRSS as it grows; sled's
//!   `segment_size` is SEGMENT_SIZE (default sled's 512 KiB). Shows whether sled's cache stays
//!   within `cache_capacity` while a backlog builds (bench/RESULTS.md, "Drain memory").
//!
//! Run it on a copy of a stopped agent's spool (it deletes records in the drain modes):
//!
//! ```sh
//! cp -a SPOOL /tmp/spool-copy
//! cargo run --release --manifest-path bench/sledprobe/Cargo.toml -- /tmp/spool-copy scandrain
//! ```
//!
//! Cold-cache figures: `sync; echo 3 > /proc/sys/vm/drop_caches` first (root).
use std::time::Instant;
fn rss() -> String {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(" ")
}
fn main() {
    let dir = std::env::args().nth(1).expect("dir");
    let arg = |i: usize| {
        std::env::args()
            .nth(i)
            .map(|a| a.parse::<u64>().expect("a number"))
    };
    let fill = std::env::args().nth(2).as_deref() == Some("fill");
    let t = Instant::now();
    let mut config = sled::Config::new();
    if let (true, Some(segment)) = (fill, arg(4).filter(|s| *s > 0)) {
        config = config.segment_size(segment as usize);
    }
    let db = config
        .path(&dir)
        .cache_capacity(16 << 20)
        .flush_every_ms(None)
        .open()
        .unwrap();
    let open = t.elapsed();
    println!("after open: {}", rss());
    let mode = std::env::args().nth(2).unwrap_or_default();
    if fill {
        let total = arg(3).expect("fill BYTES");
        let record = arg(5).unwrap_or(36_000);
        let tr = db.open_tree("traces").unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let (mut seq, mut bytes) = (0u64, 0u64);
        while bytes < total {
            let value: Vec<u8> = (0..record)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            seq += 1;
            bytes += value.len() as u64;
            tr.insert(seq.to_be_bytes(), value).unwrap();
            if seq % 16 == 0 {
                db.flush().unwrap();
            }
            if (bytes / record).is_multiple_of(2000) {
                println!("inserted {seq} records, {} MB; {}", bytes >> 20, rss());
            }
        }
        db.flush().unwrap();
        println!(
            "fill done: {seq} records, {} MB in {:.1}s; {}",
            bytes >> 20,
            t.elapsed().as_secs_f64(),
            rss()
        );
        return;
    }
    if mode == "scandrain" {
        let t = Instant::now();
        let mut b = 0u64;
        for e in db.open_tree("traces").unwrap().iter() {
            b += e.unwrap().1.len() as u64;
        }
        println!(
            "full value scan first (as Spool::open does): {b} bytes {:.2}s; {}",
            t.elapsed().as_secs_f64(),
            rss()
        );
    }
    if mode == "drain" || mode == "scandrain" {
        // What the export worker does: read a batch after the cursor (4 MiB), "send" it, then
        // remove the records (ack), flush; no full scan first.
        let tr = db.open_tree("traces").unwrap();
        let t = Instant::now();
        let (mut after, mut n, mut bytes) = (0u64, 0u64, 0u64);
        loop {
            let mut batch = Vec::new();
            let mut b = 0usize;
            for e in tr.range((after + 1).to_be_bytes()..) {
                let (k, v) = e.unwrap();
                b += v.len();
                batch.push((k, v));
                if b >= 4 << 20 {
                    break;
                }
            }
            if batch.is_empty() {
                break;
            }
            let payload: Vec<u8> = batch.iter().flat_map(|(_, v)| v.iter()).copied().collect();
            bytes += payload.len() as u64;
            after = u64::from_be_bytes(batch.last().unwrap().0.as_ref().try_into().unwrap());
            for (k, _) in &batch {
                tr.remove(k).unwrap();
                n += 1;
            }
            db.flush().unwrap();
            if n % 3000 < batch.len() as u64 {
                println!(
                    "drained {n} records {:.0} MB in {:.2}s; {}",
                    bytes as f64 / 1e6,
                    t.elapsed().as_secs_f64(),
                    rss()
                );
            }
        }
        println!(
            "drain done: {n} records {:.0} MB in {:.2}s = {:.0} MB/s; {}",
            bytes as f64 / 1e6,
            t.elapsed().as_secs_f64(),
            bytes as f64 / 1e6 / t.elapsed().as_secs_f64(),
            rss()
        );
        return;
    }
    if std::env::args().nth(2).as_deref() == Some("keys") {
        let t = Instant::now();
        let mut keys = 0u64;
        for name in ["traces", "metrics", "logs"] {
            let tree = db.open_tree(name).unwrap();
            for k in tree.iter().keys() {
                k.unwrap();
                keys += 1;
            }
        }
        println!(
            "keys-only scan FIRST {keys} {:.3}s; {}",
            t.elapsed().as_secs_f64(),
            rss()
        );
        let t = Instant::now();
        let tr = db.open_tree("traces").unwrap();
        let f = tr.first().unwrap().map(|(k, v)| (k.len(), v.len()));
        let l = tr.last().unwrap().map(|(k, v)| (k.len(), v.len()));
        println!(
            "first+last {f:?} {l:?} {:.6}s; {}",
            t.elapsed().as_secs_f64(),
            rss()
        );
        return;
    }
    let t = Instant::now();
    let (mut n, mut bytes) = (0u64, 0u64);
    for name in ["traces", "metrics", "logs"] {
        let tree = db.open_tree(name).unwrap();
        for e in tree.iter() {
            let (_, v) = e.unwrap();
            n += 1;
            bytes += v.len() as u64;
        }
    }
    let scan = t.elapsed();
    println!("after value scan: {}", rss());
    let t = Instant::now();
    let mut keys = 0u64;
    for name in ["traces", "metrics", "logs"] {
        let tree = db.open_tree(name).unwrap();
        for k in tree.iter().keys() {
            k.unwrap();
            keys += 1;
        }
    }
    let keyscan = t.elapsed();
    println!("after key scan: {}", rss());
    let t = Instant::now();
    let first = db
        .open_tree("traces")
        .unwrap()
        .first()
        .unwrap()
        .map(|(k, _)| k.len());
    let last = db
        .open_tree("traces")
        .unwrap()
        .last()
        .unwrap()
        .map(|(k, _)| k.len());
    let ends = t.elapsed();
    println!("sled open {:.3}s; usage scan {n} records {bytes} bytes {:.3}s; keys-only scan {keys} {:.3}s; first+last {:?}/{:?} {:.6}s",
        open.as_secs_f64(), scan.as_secs_f64(), keyscan.as_secs_f64(), first, last, ends.as_secs_f64());
}
