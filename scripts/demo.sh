#!/usr/bin/env bash
# Serve the demo ASGI app under gunicorn with rollover's hooks.
# Env: WORKERS (default 4), BIND (default 127.0.0.1:8000), PYTHON (default python3),
# and the demo app's DEMO_BOOT_DELAY / DEMO_FAIL_AT_IMPORT. Extra arguments go to gunicorn.
set -euo pipefail
cd "$(dirname "$0")/.."

SCRIPT=scripts/demo.sh
# shellcheck source=scripts/venv.sh
source scripts/venv.sh

ensure_venv
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[asgi]'

mkdir -p .demo
echo "reload: kill -HUP \$(cat .demo/gunicorn.pid)   or   $VENV/bin/rollover reload --pidfile .demo/gunicorn.pid --wait"
echo "status: $VENV/bin/rollover status --pidfile .demo/gunicorn.pid"

exec "$VENV/bin/gunicorn" -c python:rollover.hooks -k rollover.workers.UvicornWorker \
    -w "${WORKERS:-4}" -b "${BIND:-127.0.0.1:8000}" --pid .demo/gunicorn.pid \
    "$@" demo_app.asgi:app
