#!/usr/bin/env bash
# Fails when a Swift file imports one of moe-tune's modules that is not below its own
# (docs/architecture.md). The compiler stops an import of a module outside a target's
# dependencies only on a clean build; this check stops it on every build, and keeps the
# list below and Package.swift telling the same story.
#   bash scripts/check_layers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# module: the modules its files may import
declare -A allowed=(
  [MoEFormats]=""
  [MoEText]="MoEFormats CSentencePiece"
  [MoECore]="MoEFormats MoEText COpenBLAS CKernels"
  [MoEData]="MoEFormats MoEText MoECore"
  [MoEInference]="MoEFormats MoEText MoECore MoEData COpenBLAS CKernels"
  [MoETraining]="MoEFormats MoEText MoECore MoEData MoEInference COpenBLAS CKernels Yams"
  [MoEExport]="MoEFormats MoEText MoECore COpenBLAS CKernels"
  [MoEServe]="MoEFormats MoEText MoECore MoEData MoEInference Hummingbird Logging"
  [moe-tune]="MoEFormats MoEText MoECore MoEData MoEInference MoETraining MoEExport MoEServe COpenBLAS CKernels ArgumentParser"
)
ours=" ${!allowed[*]} COpenBLAS CKernels CSentencePiece Yams ArgumentParser Hummingbird Logging "
bad=0 files=0
for dir in Sources/*/; do
  module=$(basename "$dir")
  case "$module" in COpenBLAS|CKernels|CSentencePiece) continue ;; esac
  if [ -z "${allowed[$module]+set}" ]; then
    echo "check_layers: $dir is a module this script does not know; add it to the list" >&2
    bad=1; continue
  fi
  while IFS= read -r f; do
    files=$((files + 1))
    while IFS=: read -r line imp; do
      imp=${imp#@testable }
      name=$(echo "$imp" | sed -E 's/^import +([A-Za-z_][A-Za-z0-9_]*).*/\1/')
      case "$ours" in *" $name "*) ;; *) continue ;; esac
      case " ${allowed[$module]} " in
        *" $name "*) ;;
        *) echo "$f:$line: $module imports $name, which is not below it" >&2; bad=1 ;;
      esac
    done < <(grep -nE '^(@testable )?import ' "$f" || true)
  done < <(find "$dir" -name '*.swift')
done
# Package.swift must not give a module a dependency the list above forbids.
while read -r t d; do
  [ -n "${allowed[$t]+set}" ] || continue
  case " ${allowed[$t]} " in *" $d "*) ;; *) echo "Package.swift: $t depends on $d, which is not below it" >&2; bad=1 ;; esac
done < <(swift package dump-package 2>/dev/null | python3 -c '
import json, sys
for t in json.load(sys.stdin)["targets"]:
    for d in t.get("dependencies", []):
        for kind in ("byName", "product", "target"):
            if kind in d: print(t["name"], d[kind][0])
')
[ $bad -eq 0 ] || exit 1
echo "layers: $files files, every import points down"
