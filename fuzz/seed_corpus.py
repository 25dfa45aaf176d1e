#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/target/seeds/<target>/ (git-ignored).

Seeds: each real SDK request in tests/fixtures/otlp-http (decode_<signal>, with the
request-kind byte of fuzz/src/lib.rs's REQUEST_KINDS in front; gzip bodies also decompressed),
each protobuf request among them and in tests/fixtures/**/<signal>-*.pb (wire, with the
signal byte of fuzz/src/lib.rs's `wire` in front), config.example.toml and the embedded defaults
as `otlp-spool check` prints them (config), and spool records wrapping those bodies (record).
Then add them (and what a long scripts/fuzz.sh run found in target/corpus/<t>) to the committed
corpus and minimize it, from fuzz/:

    for t in $(cargo fuzz list); do
        cp target/seeds/$t/* target/corpus/$t/* corpus/$t/
        cargo fuzz cmin -s none "$t" -- -set_cover_merge=1 -use_counters=0; done

(set cover over edges, not hit counts: every edge the corpus reaches, in a fifth of the files
plain `cmin` keeps.)

usage: fuzz/seed_corpus.py [FIXTURES_DIR]
The defaults come from `cargo run -- check`, or from the binary named by $OTLP_SPOOL if set.
"""

import gzip
import hashlib
import json
import os
import re
import struct
import zlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests/fixtures/otlp-http"
SEEDS = ROOT / "fuzz/target/seeds"  # git-ignored, with the rest of fuzz/target
# Index into REQUEST_KINDS in fuzz/src/lib.rs: (content type, gzip?) -> first input byte.
KIND = {("protobuf", False): 0, ("json", False): 1, ("protobuf", True): 2, ("json", True): 3}
# Index into Signal::ALL, the first input byte of the `wire` target.
SIGNAL = {"traces": 0, "metrics": 1, "logs": 2}


def write(target: str, data: bytes) -> None:
    """Stores one seed under its content hash, as libFuzzer names corpus files."""
    out = SEEDS / target
    out.mkdir(parents=True, exist_ok=True)
    (out / hashlib.sha1(data).hexdigest()).write_bytes(data)


def frame(kind: int, index: int, seq: int, received_ms: int, items: int, payload: bytes, version: int = 1) -> bytes:
    """One spool segment frame: length, CRC32 of the rest, kind, version, reserved, index, seq,
    received ms, items, payload (src/spool/record.rs)."""
    rest = struct.pack(">BBHIQQI", kind, version, 0, index, seq, received_ms, items) + payload
    return struct.pack(">II", len(rest), zlib.crc32(rest)) + rest


def header(meta: dict, name: str) -> str:
    return next((v for k, v in meta["headers"] if k.lower() == name), "")


def main() -> None:
    requests = sorted(FIXTURES.glob("*/*.req"))
    if not requests:
        sys.exit(f"seed_corpus: no fixtures (*.req) under {FIXTURES}; pass the fixtures directory")
    for req in requests:
        meta = json.loads(req.with_suffix(".json").read_text())
        signal = meta["path"].removeprefix("/v1/")
        fmt = "json" if header(meta, "content-type").startswith("application/json") else "protobuf"
        body = req.read_bytes()
        gzipped = header(meta, "content-encoding") == "gzip"
        write(f"decode_{signal}", bytes([KIND[(fmt, gzipped)]]) + body)
        plain = gzip.decompress(body) if gzipped else body
        if gzipped:
            write(f"decode_{signal}", bytes([KIND[(fmt, False)]]) + plain)
        if fmt == "protobuf":
            write("wire", bytes([SIGNAL[signal]]) + plain)
        # A segment frame as src/spool/record.rs lays it out, followed by a seal.
        write("record", frame(1, 0, 7, 1_795_318_401_418, 3, plain[:256]) + frame(2, 1, 7, 0, 0, b""))
    for pb in sorted((ROOT / "tests/fixtures").glob("**/*.pb")):
        signal = pb.name.split("-")[0]
        if signal in SIGNAL:
            write("wire", bytes([SIGNAL[signal]]) + pb.read_bytes())
    write("record", frame(1, 0, 1, 0, 1, b"cut")[:20])  # shorter than the header
    write("record", frame(1, 0, 1, 0, 1, b"x", version=2))  # a newer format version
    bad = bytearray(frame(1, 0, 1, 0, 1, b"flipped"))
    bad[-1] ^= 1
    write("record", bytes(bad))  # a checksum that does not match

    example = (ROOT / "config.example.toml").read_text()
    write("config", example.encode())
    # The same with its ${VARS} written out: Config::load refuses unset variables early, and
    # the fuzz target sets none.
    write("config", re.sub(r"\$\{[^}]*\}", "value", example).encode())
    binary = [os.environ["OTLP_SPOOL"]] if os.environ.get("OTLP_SPOOL") else ["cargo", "run", "--quiet", "--"]
    defaults = subprocess.run(
        binary + ["check", "--config", "/dev/null"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout
    write("config", defaults)
    for target in sorted(p.name for p in SEEDS.iterdir()):
        print(f"seed_corpus: {target}: {len(list((SEEDS / target).iterdir()))} seeds")


if __name__ == "__main__":
    main()
