#!/usr/bin/env bash
# Set up .venv (if needed), install the package with its test extras, lint, run the tests.
# Extra arguments go to pytest, e.g.: bash scripts/test.sh -k demo -x
set -euo pipefail
cd "$(dirname "$0")/.."

SCRIPT=scripts/test.sh
# shellcheck source=scripts/venv.sh
source scripts/venv.sh

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
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[asgi,test,bench]'

# The gunicorn-version venvs (tests/matrix.py), built in the background meanwhile: the tests
# that need one wait on its lock file (and build it themselves when run without this script).
mkdir -p .cache
"$VENV/bin/python" tests/matrix.py >.cache/matrix-prebuild.log 2>&1 &

"$VENV/bin/ruff" check .

rc=0
"$VENV/bin/python" -m pytest -n 3 --dist loadfile "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "scripts/test.sh: pytest collected no tests; counting that as a failure" >&2
fi
exit "$rc"
