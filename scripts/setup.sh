#!/usr/bin/env bash
# Installs tvm_patch and everything it needs into the current Python environment.
# Host builds need no system package beyond Python 3.10+ with pip.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --upgrade pip >/dev/null
python3 -m pip install -e ".[test]"
