#!/usr/bin/env bash
# Checks every relative Markdown link in README.md and docs/*.md: the file or folder it names
# must exist relative to the linking file, and an #anchor into a Markdown file (a same-file
# `#anchor` included) must match one of that file's headings as GitHub slugs them (lower case,
# punctuation other than '-' and '_' dropped, spaces to '-', a repeated slug gets -1, -2, ...).
# http(s) and mailto links are not checked; links inside fenced code blocks and inline code
# are not links. Prints FILE:LINE: target for each broken one and exits 1; needs bash, grep,
# sed and awk only.
#   bash scripts/check_links.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# GitHub lower-cases and keeps letters of any script: use a UTF-8 locale when there is one.
for l in C.UTF-8 C.utf8 en_US.UTF-8; do
  if locale -a 2>/dev/null | grep -qix "$l"; then export LC_ALL=$l; break; fi
done

files=(README.md)
for f in docs/*.md; do [ -e "$f" ] && files+=("$f"); done

# The lines of FILE outside fenced code blocks, as "LINE<TAB>TEXT".
unfenced() {
  awk '/^[ \t]*(```|~~~)/ { fence = !fence; next } !fence { print NR "\t" $0 }' "$1"
}

# One heading text -> its GitHub slug (without the -N of a repeat).
slug() {
  printf '%s\n' "$1" |
    sed -E 's/[[:space:]]+#+[[:space:]]*$//; s/\[([^]]*)\]\([^)]*\)/\1/g' |
    sed 's/.*/\L&/' |
    sed -E 's/[^[:alnum:] _-]//g; s/ /-/g'
}

declare -A anchors=()   # file -> "\n"-separated slugs of its headings
anchors_of() {
  local f=$1 line text s list="" n
  declare -A seen=()
  while IFS=$'\t' read -r _ line; do
    [[ $line =~ ^#{1,6}[[:space:]]+(.*)$ ]] || continue
    text=${BASH_REMATCH[1]}
    s=$(slug "$text")
    if [ -n "${seen[$s]+set}" ]; then
      n=$((seen[$s] + 1)); seen[$s]=$n; s="$s-$n"
    else
      seen[$s]=0
    fi
    list+="$s"$'\n'
  done < <(unfenced "$f")
  anchors[$f]=$list
}

checked=0 broken=0
for f in "${files[@]}"; do
  dir=$(dirname "$f")
  while IFS=$'\t' read -r lineno target; do
    case "$target" in http://*|https://*|mailto:*) continue ;; esac
    checked=$((checked + 1))
    path=${target%%#*}
    anchor=""
    [[ $target == *"#"* ]] && anchor=${target#*#}
    if [ -z "$path" ]; then
      dest=$f
    else
      dest="$dir/$path"
      if [ ! -e "$dest" ]; then
        echo "$f:$lineno: $target"; broken=$((broken + 1)); continue
      fi
    fi
    if [ -n "$anchor" ] && [[ $dest == *.md ]] && [ -f "$dest" ]; then
      dest=$(realpath --relative-to=. "$dest")
      [ -n "${anchors[$dest]+set}" ] || anchors_of "$dest"
      if ! grep -qxF -- "$anchor" <<<"${anchors[$dest]}"; then
        echo "$f:$lineno: $target"; broken=$((broken + 1))
      fi
    fi
  done < <(unfenced "$f" | awk -F'\t' '{
      line = $0; sub(/^[0-9]+\t/, "", line)
      gsub(/`[^`]*`/, "", line)          # inline code holds no links
      while (match(line, /\[[^]]*\]\([^) ]+( "[^"]*")?\)/)) {
        s = substr(line, RSTART, RLENGTH)
        sub(/^\[[^]]*\]\(/, "", s); sub(/( "[^"]*")?\)$/, "", s)
        print $1 "\t" s
        line = substr(line, RSTART + RLENGTH)
      }
    }')
done

if [ "$broken" -gt 0 ]; then
  echo "links: $checked checked, $broken broken" >&2
  exit 1
fi
echo "links: $checked checked, 0 broken"
