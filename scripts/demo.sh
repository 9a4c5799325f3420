#!/usr/bin/env bash
# The main job on the small model and data shipped in data/: installs what it needs,
# builds moe-tune (release) and evaluates the demo model on the demo test split.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
swift build -c release --product moe-tune
./.build/release/moe-tune eval --model data/demo-model --data data/test.jsonl
