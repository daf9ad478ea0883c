#!/usr/bin/env bash
# Peer benchmark: neural-tangents 0.6.5 (JAX) against cntk's default CPU backend, same machine, same run.
# Builds its own venv (benchmarks/.peer-venv, git-ignored; not a project dependency, not run in CI),
# then times CNN-GAP and CNN-Flatten, 3 conv layers (depth 4), 32x32x3, float32, on both sides and
# prints one table with the per-row ratio.
#   benchmarks/peer_neural_tangents.sh [--quick]
#   benchmarks/peer_neural_tangents.sh --setup   (only build the environment: benchmarks/empirical_ntk.py uses it)
# Environment: PEER_VENV (default benchmarks/.peer-venv), PYTHON (default python3, for the peer venv),
# OURS_PY (default .venv/bin/python, the project's environment).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PEER_VENV="${PEER_VENV:-benchmarks/.peer-venv}"
PY="${PYTHON:-python3}"
OURS_PY="${OURS_PY:-.venv/bin/python}"
SCRIPT=benchmarks/peer_neural_tangents.py

if [ ! -x "$PEER_VENV/bin/python" ] || ! "$PEER_VENV/bin/python" -c 'import neural_tangents' 2>/dev/null; then
    echo "peer: creating $PEER_VENV with neural-tangents==0.6.5 jax==0.4.25 jaxlib==0.4.25 numpy<2" >&2
    "$PY" -m venv "$PEER_VENV"
    "$PEER_VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "neural-tangents==0.6.5" "jax==0.4.25" "jaxlib==0.4.25" "numpy<2" "scipy<1.13"
fi
if [ "${1:-}" = "--setup" ]; then
    "$PEER_VENV/bin/python" -c 'import jax, neural_tangents; print("peer:", neural_tangents.__version__, "jax", jax.__version__)'
    exit 0
fi
if [ ! -x "$OURS_PY" ]; then
    echo "peer: $OURS_PY not found: run ./dev.sh test once (or set OURS_PY)" >&2; exit 1
fi
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
"$PEER_VENV/bin/python" "$SCRIPT" peer "$@" > "$tmp/peer.json"
"$OURS_PY" "$SCRIPT" ours "$@" > "$tmp/ours.json"
"$OURS_PY" "$SCRIPT" table "$tmp/peer.json" "$tmp/ours.json"
