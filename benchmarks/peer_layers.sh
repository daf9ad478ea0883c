#!/usr/bin/env bash
# External check of the layer vocabulary against neural-tangents 0.6.5 (out of CI): same networks,
# same float64 inputs, NTK and NNGP, one table.  Uses / builds the peer venv of peer_neural_tangents.sh.
#   benchmarks/peer_layers.sh
#   benchmarks/peer_layers.sh --speed [RUNS]   entries/s against neural-tangents, Myrtle-5, Erf CNN-GAP depth 3 and
#                                              ABReLU CNN-GAP depth 4 on 32x32x3 float32: RUNS (default 2)
#                                              alternating runs per side, one table
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PEER_VENV="${PEER_VENV:-benchmarks/.peer-venv}"
PY="${PYTHON:-python3}"
OURS_PY="${OURS_PY:-.venv/bin/python}"
if [ ! -x "$PEER_VENV/bin/python" ] || ! "$PEER_VENV/bin/python" -c 'import neural_tangents' 2>/dev/null; then
    echo "peer: creating $PEER_VENV with neural-tangents==0.6.5 jax==0.4.25 jaxlib==0.4.25 numpy<2" >&2
    "$PY" -m venv "$PEER_VENV"
    "$PEER_VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "neural-tangents==0.6.5" "jax==0.4.25" "jaxlib==0.4.25" "numpy<2" "scipy<1.13"
fi
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
if [ "${1:-}" = "--speed" ]; then
    for r in $(seq 1 "${2:-2}"); do  # alternate the sides so that both see the same machine load
        "$OURS_PY" benchmarks/peer_layers.py time-ours > "$tmp/ours-$r.json"
        "$PEER_VENV/bin/python" benchmarks/peer_layers.py time-peer 2>/dev/null > "$tmp/peer-$r.json"
    done
    "$OURS_PY" benchmarks/peer_layers.py timing-table "$tmp"/ours-*.json "$tmp"/peer-*.json
    exit 0
fi
"$PEER_VENV/bin/python" benchmarks/peer_layers.py peer 2>/dev/null > "$tmp/peer.json"
"$OURS_PY" benchmarks/peer_layers.py ours > "$tmp/ours.json"
"$OURS_PY" benchmarks/peer_layers.py table "$tmp/peer.json" "$tmp/ours.json"
