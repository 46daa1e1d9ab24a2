#!/usr/bin/env bash
# Serve the demo ASGI app under gunicorn with rollover's hooks.
# Env: WORKERS (default 4), BIND (default 127.0.0.1:8000), PYTHON (default python3),
# and the demo app's DEMO_BOOT_DELAY / DEMO_FAIL_AT_IMPORT. Extra arguments go to gunicorn.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv

die() { echo "scripts/demo.sh: $*" >&2; exit 1; }

ensure_venv() {
    command -v "$PY" >/dev/null 2>&1 || die "$PY not found; install Python >= 3.11"
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PY is $("$PY" -V 2>&1); Python >= 3.11 is required"
    if [[ -x $VENV/bin/python ]]; then
        "$VENV/bin/python" -m pip --version >/dev/null 2>&1 && return
        "$VENV/bin/python" -m ensurepip -q >/dev/null 2>&1 && return
        # e.g. left half-made by a `venv` that lacked ensurepip: rebuild it
        echo "scripts/demo.sh: $VENV has no pip; recreating it" >&2
    fi
    rm -rf "$VENV"
    local err ver pkg
    if ! err=$("$PY" -m venv "$VENV" 2>&1); then
        rm -rf "$VENV"
        [[ $err == *ensurepip* ]] || die "'$PY -m venv $VENV' failed: ${err##*$'\n'}"
        ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            echo "scripts/demo.sh: ensurepip missing; installing python3-venv with apt-get" >&2
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq >/dev/null || true
            for pkg in "python$ver-venv" python3-venv; do
                apt-get install -y -qq "$pkg" >/dev/null 2>&1 && break
            done
        fi
        "$PY" -m venv "$VENV" >/dev/null 2>&1 || {
            rm -rf "$VENV"
            die "cannot create $VENV: ensurepip is missing (install python$ver-venv or python3-venv)"
        }
    fi
}

ensure_venv
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[asgi]'

mkdir -p .demo
echo "reload: kill -HUP \$(cat .demo/gunicorn.pid)   or   $VENV/bin/rollover reload --pidfile .demo/gunicorn.pid --wait"
echo "status: $VENV/bin/rollover status --pidfile .demo/gunicorn.pid"

exec "$VENV/bin/gunicorn" -c python:rollover.hooks -k rollover.workers.UvicornWorker \
    -w "${WORKERS:-4}" -b "${BIND:-127.0.0.1:8000}" --pid .demo/gunicorn.pid \
    "$@" demo_app.asgi:app
