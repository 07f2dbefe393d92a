#!/usr/bin/env bash
# Set up, then run the main job on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m tvm_patch.cli demo "$@"
