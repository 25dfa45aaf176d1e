#!/bin/sh
# credential_process for tests/aws.rs: fails (as an expired login would) while STATE/fail
# exists, else hands out static session credentials valid for an hour.
# usage: flaky.sh STATE_DIR
set -eu
state="$1"
echo x >> "$state/flaky.calls"
if [ -e "$state/fail" ]; then
  echo "the login session has expired; log in again" >&2
  exit 1
fi
printf '{"Version":1,"AccessKeyId":"AKIDFLAKY","SecretAccessKey":"secret-flaky","SessionToken":"token-flaky","Expiration":"%s"}\n' \
  "$(date -u -d "@$(( $(date +%s) + 3600 ))" +%Y-%m-%dT%H:%M:%SZ)"
