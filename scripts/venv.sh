# Shared by scripts/demo.sh and scripts/test.sh (sourced, not run): create .venv with pip.
# The caller sets SCRIPT (its name, for messages) and may set PYTHON (default python3).
PY=${PYTHON:-python3}
VENV=.venv

die() { echo "$SCRIPT: $*" >&2; exit 1; }

ensure_venv() {
    command -v "$PY" >/dev/null 2>&1 || die "$PY not found; install Python >= 3.11"
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PY is $("$PY" -V 2>&1); Python >= 3.11 is required"
    if [[ -x $VENV/bin/python ]]; then
        "$VENV/bin/python" -m pip --version >/dev/null 2>&1 && return
        "$VENV/bin/python" -m ensurepip -q >/dev/null 2>&1 && return
        # e.g. left half-made by a `venv` that lacked ensurepip: rebuild it
        echo "$SCRIPT: $VENV has no pip; recreating it" >&2
    fi
    rm -rf "$VENV"
    local err ver pkg
    if ! err=$("$PY" -m venv "$VENV" 2>&1); then
        rm -rf "$VENV"
        [[ $err == *ensurepip* ]] || die "'$PY -m venv $VENV' failed: ${err##*$'\n'}"
        ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            echo "$SCRIPT: ensurepip missing; installing python3-venv with apt-get" >&2
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

