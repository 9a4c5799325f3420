#!/usr/bin/env bash
# `moe-tune serve` against curl, as CI runs it (no Python): trains a small adapter on the
# demo model, serves the base and the adapter, and checks
#   - /health and /v1/models (both names);
#   - 8 concurrent completions (4 base, 4 adapter) equal `generate --prompts` on the same
#     prompts, greedy;
#   - a streamed chat (server-sent events, [DONE] at the end) equals the same chat unstreamed;
#   - a stop string ends the text before it;
#   - bad requests get OpenAI's error object with the right status, and the server goes on:
#     malformed JSON, a wrong type, n=2, an unknown model, a prompt longer than the context,
#     a body over the limit, a client that hangs up mid-stream;
#   - SIGTERM stops it cleanly.
#   bash scripts/check_serve.sh            (MOE_TUNE=path/to/moe-tune to pick the binary)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${MOE_TUNE:-.build/debug/moe-tune}
tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
fail() { echo "check_serve: FAILED: $*" >&2; [ -f "$tmp/serve.err" ] && tail -5 "$tmp/serve.err" >&2; exit 1; }
checks=0
ok() { checks=$((checks + 1)); }

"$bin" train --config configs/demo.yaml --set training.max_steps=100 --set training.eval_every=1000 \
  --set training.out_dir="$tmp/facts" >"$tmp/train.log" 2>&1 || { cat "$tmp/train.log" >&2; fail "training the adapter"; }
"$bin" serve --model data/demo-model --adapter "facts=$tmp/facts" --port 0 --parallel 4 2>"$tmp/serve.err" &
pid=$!
for _ in $(seq 1 600); do grep -q 'listening on' "$tmp/serve.err" 2>/dev/null && break; kill -0 $pid 2>/dev/null || fail "serve exited"; sleep 0.1; done
url=$(grep -o 'http://[^ ]*' "$tmp/serve.err" | head -1)
[ -n "$url" ] || fail "no 'listening on' line"

# post PATH BODY: the response body, then the HTTP status on the last line.
post() { curl -s -w '\n%{http_code}' "$url$1" -H 'Content-Type: application/json' --data-binary "$2"; }
status_of() { tail -n 1; }
field() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p"; }

curl -sf "$url/health" | grep -q '"status":"ok"' || fail "/health"; ok
models=$(curl -sf "$url/v1/models")
echo "$models" | grep -q '"id":"demo-model"' && echo "$models" | grep -q '"id":"facts"' || fail "/v1/models: $models"; ok

# Eight at once: the first 4 prompts of data/test.jsonl to the base and to the adapter.
sed -n 's/.*"prompt": *"\([^"]*\)".*/\1/p' data/test.jsonl | head -4 > "$tmp/prompts.txt"
while read -r p; do echo "{\"prompt\": \"$p\"}"; done < "$tmp/prompts.txt" > "$tmp/prompts.jsonl"
for model in demo-model facts; do
  adapter=(); [ $model = facts ] && adapter=(--adapter "$tmp/facts")
  "$bin" generate --model data/demo-model "${adapter[@]}" --prompts "$tmp/prompts.jsonl" --max-new-tokens 8 --parallel 4 \
    2>/dev/null | field text > "$tmp/expected-$model.txt"
  i=0
  while read -r p; do
    post /v1/completions "{\"model\":\"$model\",\"prompt\":\"$p\",\"max_tokens\":8,\"temperature\":0}" > "$tmp/got-$model-$i.txt" &
    i=$((i + 1))
  done < "$tmp/prompts.txt"
done
wait $(jobs -p | grep -v "^$pid\$") 2>/dev/null || true
for model in demo-model facts; do
  for i in 0 1 2 3; do
    [ "$(status_of < "$tmp/got-$model-$i.txt")" = 200 ] || fail "$model request $i: $(cat "$tmp/got-$model-$i.txt")"
    got=$(head -n 1 "$tmp/got-$model-$i.txt" | field text)
    want=$(sed -n "$((i + 1))p" "$tmp/expected-$model.txt")
    [ "$got" = "$want" ] || fail "$model prompt $i: served '$got', generate '$want'"
    ok
  done
done
cmp -s "$tmp/expected-demo-model.txt" "$tmp/expected-facts.txt" && fail "the adapter changed no answer"

# A streamed chat equals the same chat unstreamed.
chat='"messages":[{"role":"user","content":"What is the capital of Brevia?"}],"max_tokens":12,"temperature":0,"model":"facts"'
whole=$(post /v1/chat/completions "{$chat}" | head -n 1 | field content)
curl -sN "$url/v1/chat/completions" --data-binary "{$chat,\"stream\":true,\"stream_options\":{\"include_usage\":true}}" > "$tmp/stream.txt"
[ "$(grep -c '^data: ' "$tmp/stream.txt")" -ge 3 ] || fail "stream: $(cat "$tmp/stream.txt")"
[ "$(grep '^data: ' "$tmp/stream.txt" | tail -n 1)" = "data: [DONE]" ] || fail "stream does not end with [DONE]"
grep -q '"object":"chat.completion.chunk"' "$tmp/stream.txt" || fail "stream chunks"
grep -q '"usage":{"completion_tokens":' "$tmp/stream.txt" || fail "stream usage chunk"
streamed=$(grep -o '"content":"[^"]*"' "$tmp/stream.txt" | sed 's/"content":"\(.*\)"/\1/' | tr -d '\n')
[ -n "$whole" ] && [ "$streamed" = "$whole" ] || fail "streamed '$streamed' vs whole '$whole'"; ok
# The same chat again: its prompt comes from a finished request's cache (all but its last token).
again=$(post /v1/chat/completions "{$chat}" | head -n 1)
prompt=$(echo "$again" | grep -o '"prompt_tokens":[0-9]*' | cut -d: -f2)
cached=$(echo "$again" | grep -o '"cached_tokens":[0-9]*' | cut -d: -f2)
[ -n "$prompt" ] && [ "$cached" = "$((prompt - 1))" ] && [ "$(echo "$again" | field content)" = "$whole" ] \
  || fail "cached prompt: $again"; ok

# A stop string: the text ends before it.
full=$(post /v1/completions '{"prompt":"The capital of","max_tokens":12,"temperature":0}' | head -n 1 | field text)
cut=$(post /v1/completions '{"prompt":"The capital of","max_tokens":12,"temperature":0,"stop":[" is"]}' | head -n 1)
[ "$(echo "$cut" | field text)" = "${full%% is*}" ] && echo "$cut" | grep -q '"finish_reason":"stop"' || fail "stop: '$full' -> $cut"; ok

# Bad requests: status and OpenAI's error object; the server serves on.
expect() { # STATUS CODE_OR_TYPE PATH BODY
  local r; r=$(post "$3" "$4")
  [ "$(echo "$r" | status_of)" = "$1" ] && echo "$r" | head -n 1 | grep -q "\"error\":{" && echo "$r" | grep -q "$2" \
    || fail "$3 $(echo "$4" | head -c 80): expected $1 $2, got $r"
  ok
}
expect 400 invalid_request_error /v1/completions '{"prompt": "x",'
expect 400 '"param":"temperature"' /v1/completions '{"prompt":"x","temperature":"hot"}'
expect 400 '"param":"n"' /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"n":2}'
expect 400 '"param":"messages"' /v1/chat/completions '{"messages":[]}'
expect 404 model_not_found /v1/completions '{"prompt":"x","model":"nope"}'
expect 400 context_length_exceeded /v1/completions "{\"prompt\":\"$(printf 'word %.0s' $(seq 1 600))\"}"
head -c 9000000 /dev/zero | tr '\0' 'a' > "$tmp/big.txt"
r=$(curl -s -w '\n%{http_code}' "$url/v1/completions" --data-binary @"$tmp/big.txt")
[ "$(echo "$r" | status_of)" = 413 ] || fail "big body: $(echo "$r" | tail -c 200)"; ok
# A client that leaves mid-stream (head closes the pipe): its slot is freed, the server goes on.
curl -sN "$url/v1/completions" --data-binary '{"prompt":"a","max_tokens":500,"temperature":1,"stream":true}' | head -c 200 >/dev/null || true
kill -0 $pid || fail "the server died after a client left"
again=$(post /v1/completions '{"prompt":"The capital of","max_tokens":12,"temperature":0}' | head -n 1 | field text)
[ "$again" = "$full" ] || fail "after a client left: '$again' vs '$full'"; ok

kill -TERM $pid
for _ in $(seq 1 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
kill -0 $pid 2>/dev/null && fail "serve did not stop on SIGTERM"
wait $pid || fail "serve exited with status $? on SIGTERM"
pid=
echo "check_serve: $checks checks passed ($url)"
