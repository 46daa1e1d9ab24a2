#!/usr/bin/env bash
# Set up .venv (if needed), install the package with its test extras, lint, run the tests.
# Extra arguments go to pytest, e.g.: bash scripts/test.sh -k demo -x
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv

die() { echo "scripts/test.sh: $*" >&2; exit 1; }

ensure_venv() {
    command -v "$PY" >/dev/null 2>&1 || die "$PY not found; install Python >= 3.11"
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PY is $("$PY" -V 2>&1); Python >= 3.11 is required"
    if [[ -x $VENV/bin/python ]]; then
        "$VENV/bin/python" -m pip --version >/dev/null 2>&1 && return
        "$VENV/bin/python" -m ensurepip -q >/dev/null 2>&1 && return
        # e.g. left half-made by a `venv` that lacked ensurepip: rebuild it
        echo "scripts/test.sh: $VENV has no pip; recreating it" >&2
    fi
    rm -rf "$VENV"
    local err ver pkg
    if ! err=$("$PY" -m venv "$VENV" 2>&1); then
        rm -rf "$VENV"
        [[ $err == *ensurepip* ]] || die "'$PY -m venv $VENV' failed: ${err##*$'\n'}"
        ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            echo "scripts/test.sh: ensurepip missing; installing python3-venv with apt-get" >&2
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

# nginx for tests/test_deploy_fleet.py (skipped without it, failed under CI=true)
ensure_nginx() {
    if command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]]; then
        return
    fi
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "scripts/test.sh: installing nginx with apt-get (for the fleet deploy test)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null || true
        apt-get install -y -qq --no-install-recommends nginx >/dev/null \
            || echo "scripts/test.sh: could not install nginx; the fleet test will skip (fail under CI=true)" >&2
    fi
}

ensure_venv
ensure_nginx
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[asgi,test]'

"$VENV/bin/ruff" check .

rc=0
"$VENV/bin/python" -m pytest -n 3 --dist loadfile "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "scripts/test.sh: pytest collected no tests; counting that as a failure" >&2
fi
exit "$rc"
