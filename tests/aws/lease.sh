#!/bin/sh
# credential_process for tests/aws.rs: hands out credentials that expire LEASE seconds from now,
# numbered by a counter (AccessKeyId AKIDLEASE0001, secret-lease-1, token-lease-1, ...), and logs
# "<n> <expiry epoch>" to STATE/lease.log.
# usage: lease.sh STATE_DIR LEASE_SECONDS
set -eu
state="$1"
lease="$2"
n=$(( $(cat "$state/lease.count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$state/lease.count"
expiry=$(( $(date +%s) + lease ))
echo "$n $expiry" >> "$state/lease.log"
printf '{"Version":1,"AccessKeyId":"AKIDLEASE%04d","SecretAccessKey":"secret-lease-%d","SessionToken":"token-lease-%d","Expiration":"%s"}\n' \
  "$n" "$n" "$n" "$(date -u -d "@$expiry" +%Y-%m-%dT%H:%M:%SZ)"
