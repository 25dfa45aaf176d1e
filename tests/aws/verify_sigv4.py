"""Recomputes SigV4 `Authorization` headers with botocore, independently of otlp-spool.

usage: verify_sigv4.py REQUESTS.json
REQUESTS.json: a list of {method, url, headers: [[name, value], ...], body_hex, access_key,
secret_key, token (or null), region, service}, as the test upstream received them.

For each request: the headers named in its SignedHeaders (except x-amz-date and
x-amz-security-token, which botocore adds itself from the timestamp and the credentials) are
given to botocore's SigV4Auth with the request's own x-amz-date, and the Authorization botocore
computes is compared with the one received. Prints a JSON list of {ok, got, expected} and exits
0 if every request matched, 1 otherwise.
"""
import json
import sys

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def expected_authorization(req):
    headers = {k.lower(): v for k, v in req["headers"]}
    got = headers.get("authorization", "")
    signed = got.split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";") if "SignedHeaders=" in got else []
    to_sign = {k: headers[k] for k in signed if k in headers and k not in ("x-amz-date", "x-amz-security-token")}
    request = AWSRequest(method=req["method"], url=req["url"], data=bytes.fromhex(req["body_hex"]), headers=to_sign)
    auth = SigV4Auth(Credentials(req["access_key"], req["secret_key"], req.get("token")), req["service"], req["region"])
    request.context["timestamp"] = headers.get("x-amz-date", "")
    auth._modify_request_before_signing(request)
    canonical = auth.canonical_request(request)
    string_to_sign = auth.string_to_sign(request, canonical)
    auth._inject_signature_to_request(request, auth.signature(string_to_sign, request))
    return got, request.headers["Authorization"]


def main():
    with open(sys.argv[1]) as f:
        requests = json.load(f)
    results = []
    for req in requests:
        got, expected = expected_authorization(req)
        results.append({"ok": got == expected, "got": got, "expected": expected})
    json.dump(results, sys.stdout)
    sys.exit(0 if results and all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
