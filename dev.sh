#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv and installs the project when missing.
#   ./dev.sh run [hydra overrides]   the default experiment (python run.py ...)
#   ./dev.sh test [pytest args]      the test suite
#   ./dev.sh bench [script args]     the CPU kernel benchmark (benchmarks/kernels.py)
#   ./dev.sh python ...              anything else inside the environment
# Environment: TORCH_SPEC (default torch==2.13.0, a CPU build), TORCH_INDEX_URL (a PyTorch wheel
# index, e.g. the CUDA one matching your driver), VENV (default .venv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VENV="${VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PY="${PYTHON:-python3}"

ensure_env() {
    if ! command -v "$PY" >/dev/null; then
        echo "dev.sh: $PY not found: install Python 3.11 or newer (apt-get install python3 python3-venv)" >&2; exit 1
    fi
    if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "dev.sh: $("$PY" --version) is too old: Python 3.11 or newer is needed (set PYTHON=python3.11)" >&2; exit 1
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        if ! "$PY" -m venv "$VENV" 2>/dev/null; then
            rm -rf "$VENV"
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
                "$PY" -m venv "$VENV"
            else
                echo "dev.sh: python venv support is missing: run 'sudo apt-get install python3-venv' and retry" >&2; exit 1
            fi
        fi
    fi
    local stamp="$VENV/.installed-$(cat pyproject.toml | sha256sum | cut -c1-12)-$(echo "$TORCH_SPEC ${TORCH_INDEX_URL:-}" | sha256sum | cut -c1-8)"
    if [ ! -f "$stamp" ]; then
        echo "dev.sh: installing $TORCH_SPEC and the project into $VENV (first run only)" >&2
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
        rm -f "$VENV"/.installed-*
        touch "$stamp"
    fi
}

# Fashion-MNIST (the second real data set) from Debian's package, where this machine can: as root with
# apt-get.  Best effort, once per environment; otherwise the loader's error says the command to run.
FASHION_DIR=/usr/share/datasets/fashion-mnist
ensure_data() {
    [ -f "$FASHION_DIR/train-images-idx3-ubyte.gz" ] || [ -f "$FASHION_DIR/train-images-idx3-ubyte" ] && return 0
    [ -f "$VENV/.fashion-mnist-tried" ] && return 0
    touch "$VENV/.fashion-mnist-tried"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "dev.sh: installing Fashion-MNIST (apt-get install dataset-fashion-mnist)" >&2
        { apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
          { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }; } ||
            echo "dev.sh: could not install dataset-fashion-mnist; data=fashion_mnist needs it (or data.root=DIR)" >&2
    else
        echo "dev.sh: Fashion-MNIST is not installed: run 'sudo apt-get install dataset-fashion-mnist' for data=fashion_mnist" >&2
    fi
}

cmd="${1:-}"; shift || true
case "$cmd" in
    run)    ensure_env; ensure_data; exec "$VENV/bin/python" run.py "$@" ;;
    test)   ensure_env; ensure_data; exec "$VENV/bin/python" -m pytest "$@" ;;
    bench)  ensure_env; exec "$VENV/bin/python" benchmarks/kernels.py "$@" ;;
    python) ensure_env; ensure_data; exec "$VENV/bin/python" "$@" ;;
    *) echo "usage: ./dev.sh run|test|bench|python [args]" >&2; exit 2 ;;
esac
