#!/usr/bin/env bash
# Set up .venv (if needed), install the package with its test extras, lint, run the tests.
# Extra arguments go to pytest, e.g.: bash scripts/test.sh -k demo -x
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
# The time the whole run took (venv, lint, tests), said last whatever the outcome.
say_elapsed() {
    local rc=$? elapsed=$((SECONDS - started))
    echo "scripts/test.sh: done in $((elapsed / 60))m$(printf '%02d' $((elapsed % 60)))s" \
        "(exit $rc) on $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
}
trap say_elapsed EXIT

SCRIPT=scripts/test.sh
# shellcheck source=scripts/venv.sh
source scripts/venv.sh

# Said once, up front: the system packages this script may install, and why.
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "$SCRIPT: as root with apt-get, this may install system packages: nginx (if missing," \
        "for tests/test_deploy_fleet.py: skipped without it, failed under CI=true) and" \
        "python3-venv (if 'python3 -m venv' lacks ensurepip)" >&2
elif ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
    echo "$SCRIPT: no nginx, and not root with apt-get to install it:" \
        "tests/test_deploy_fleet.py skips" >&2
fi

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
# The gunicorn-version venvs (tests/matrix.py; only the stdlib and this venv's pip needed),
# built meanwhile and waited for before pytest, whose tests would otherwise build them on
# CPUs busy with the other tests. Pytest alone builds them too; a failure here is reported
# by the tests that need the venv.
mkdir -p .cache
"$VENV/bin/python" tests/matrix.py >.cache/matrix-prebuild.log 2>&1 &
matrix_pid=$!
ensure_nginx
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[asgi,test,bench]'

"$VENV/bin/ruff" check .
"$VENV/bin/mypy"   # [tool.mypy] in pyproject.toml: the rollover package
wait "$matrix_pid" || echo "scripts/test.sh: tests/matrix.py failed (.cache/matrix-prebuild.log)" >&2

rc=0
"$VENV/bin/python" -m pytest -n 3 --dist loadfile "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "scripts/test.sh: pytest collected no tests; counting that as a failure" >&2
fi
exit "$rc"
