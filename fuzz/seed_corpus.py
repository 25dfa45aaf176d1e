#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/target/seeds/<target>/ (git-ignored).

Seeds: each real SDK request in ../shared/fixtures/otlp-http (decode_<signal>, with the
request-kind byte of fuzz/src/lib.rs's REQUEST_KINDS in front; gzip bodies also decompressed),
config.example.toml and the embedded defaults as `otlp-spool check` prints them (config), and
spool records wrapping those bodies (record). Then add them (and what a long scripts/fuzz.sh
run found in target/corpus/<t>) to the committed corpus and minimize it, from fuzz/:

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
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/fixtures/otlp-http"
SEEDS = ROOT / "fuzz/target/seeds"  # git-ignored, with the rest of fuzz/target
# Index into REQUEST_KINDS in fuzz/src/lib.rs: (content type, gzip?) -> first input byte.
KIND = {("protobuf", False): 0, ("json", False): 1, ("protobuf", True): 2, ("json", True): 3}


def write(target: str, data: bytes) -> None:
    """Stores one seed under its content hash, as libFuzzer names corpus files."""
    out = SEEDS / target
    out.mkdir(parents=True, exist_ok=True)
    (out / hashlib.sha1(data).hexdigest()).write_bytes(data)


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
        # A spool record as src/spool/record.rs lays it out: version 1, flags, items, received ms.
        write("record", struct.pack(">BBIQ", 1, 0, 3, 1_795_318_401_418) + plain[:256])
    write("record", b"\x01\x00\x00\x00")  # shorter than the header
    write("record", struct.pack(">BBIQ", 2, 0, 1, 0))  # a newer format version

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
