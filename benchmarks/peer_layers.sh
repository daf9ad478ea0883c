#!/usr/bin/env bash
# External check of the layer vocabulary against neural-tangents 0.6.5 (out of CI): same networks,
# same float64 inputs, NTK and NNGP, one table.  Uses / builds the peer venv of peer_neural_tangents.sh.
#   benchmarks/peer_layers.sh
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
"$PEER_VENV/bin/python" benchmarks/peer_layers.py peer 2>/dev/null > "$tmp/peer.json"
"$OURS_PY" benchmarks/peer_layers.py ours > "$tmp/ours.json"
"$OURS_PY" benchmarks/peer_layers.py table "$tmp/peer.json" "$tmp/ours.json"
