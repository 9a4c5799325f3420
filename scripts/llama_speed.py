"""llama.cpp's speed on a GGUF, measured the way `moe-tune generate --json` reports its own:
prompt tokens/s over one batched evaluation of a prompt, and greedy decode tokens/s with the
end of sequence ignored. Needs llama-cpp-python in a virtual environment outside the
repository (scripts/bench_decode.sh runs it beside moe-tune).
Usage: python llama_speed.py FILE.gguf PROMPT_FILE NEW_TOKENS THREADS  -> one JSON line"""
import json, sys, time
import llama_cpp

path, prompt_file, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
text = open(prompt_file).read().strip()
llm = llama_cpp.Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=2048, n_batch=512,
                      verbose=False)
tokens = llm.tokenize(text.encode())
t = time.time()
llm.eval(tokens)
prompt_s = time.time() - t
t = time.time()
for _ in range(n):
    llm.eval([llm.sample(temp=0.0)])
decode_s = time.time() - t
print(json.dumps({"prompt_tokens": len(tokens), "prompt_tokens_per_s": len(tokens) / prompt_s,
                  "generated_tokens": n, "tokens_per_s": n / decode_s}))
