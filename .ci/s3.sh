#!/usr/bin/env bash
# Start a local S3-compatible server on 127.0.0.1:55433 for the store's tests and print the
# endpoint the tests read from $CLOTHOPT_TEST_S3. The server is moto's (`moto[server]`, in the
# dev extra): neither PyPI, Debian nor npm packages a real S3 server (MinIO, SeaweedFS), only
# emulators. Idempotent: a server already answering is reused.
set -euo pipefail
PORT=${CLOTHOPT_S3_PORT:-55433}
PY=${PY:-.venv/bin/python}
LOG=${CLOTHOPT_S3_LOG:-/tmp/clothopt-s3.log}
up() { "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/', timeout=2)" 2>/dev/null; }
if ! up; then
  nohup "$PY" -m moto.server -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 &
  for _ in $(seq 1 60); do up && break; sleep 0.5; done
  up || { echo "the S3 server did not start (see $LOG)" >&2; exit 1; }
fi
echo "http://127.0.0.1:${PORT}"
