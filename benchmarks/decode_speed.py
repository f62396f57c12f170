"""Single-stream decode speed: openvertex (streaming, over HTTP) vs llama-cpp-python called directly.

Both run the same model, prompt, thread count and greedy sampling in the same run; the
server runs in its own process, idle while the direct measurement runs. Decode speed is
tokens after the first one divided by the time from the first token to the last.

    .venv/bin/python benchmarks/decode_speed.py [--tokens 256] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import httpx
import llama_cpp

from openvertex.backends.local.model import resolve_model_path
from openvertex.backends.local.prompt import ChatTemplate, contents_to_messages
from openvertex.protocol import generate_content as gc

PROMPT = "Write a long, detailed story about a magic backpack that travels the world."
PATH = "/v1/projects/bench/locations/us-central1/endpoints/openapi/chat/completions"


def start_server() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "openvertex", "serve", "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    base = process.stdout.readline().split()[-1]  # "openvertex listening on http://127.0.0.1:PORT"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("server did not become ready")


def server_decode(base: str, tokens: int) -> tuple[float, int]:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    first = last = 0.0
    generated = 0
    with httpx.stream(
        "POST", base + PATH, json=body, headers={"Authorization": "Bearer bench"}, timeout=120
    ) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            now = time.perf_counter()
            chunk = json.loads(line[6:])
            if chunk["choices"][0]["delta"].get("content"):
                first = first or now
                last = now
            if "usage" in chunk:
                generated = chunk["usage"]["completion_tokens"]
    return (generated - 1) / (last - first), generated


def direct_decode(llama: llama_cpp.Llama, prompt: list[int], tokens: int) -> tuple[float, int]:
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    first = 0.0
    generated = 0
    for token in llama.generate(prompt, temp=0.0, repeat_penalty=1.0):
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        llama.detokenize([token])
        generated += 1
        if generated == 1:
            first = time.perf_counter()
        if generated >= tokens:
            break
    return (generated - 1) / (time.perf_counter() - first), generated


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decode_speed.json"))
    args = parser.parse_args()

    threads = os.cpu_count() or 1
    llama = llama_cpp.Llama(
        model_path=str(resolve_model_path("smollm2")),
        n_ctx=8192,
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    bos = llama.detokenize([llama.token_bos()], special=True).decode()
    eos = llama.detokenize([llama.token_eos()], special=True).decode()
    template = ChatTemplate(llama.metadata.get("tokenizer.chat_template"), bos_token=bos, eos_token=eos)
    contents = [gc.Content(role="user", parts=[gc.Part(text=PROMPT)])]
    prompt = llama.tokenize(template.render(contents_to_messages(None, contents)).encode(), add_bos=True, special=True)

    process, base = start_server()
    server_runs: list[float] = []
    direct_runs: list[float] = []
    counts: set[int] = set()
    try:
        server_decode(base, 16)  # warm-up
        direct_decode(llama, prompt, 16)
        for _ in range(args.rounds):  # interleaved, so drift hits both sides alike
            rate, count = server_decode(base, args.tokens)
            server_runs.append(rate)
            counts.add(count)
            rate, count = direct_decode(llama, prompt, args.tokens)
            direct_runs.append(rate)
            counts.add(count)
    finally:
        process.terminate()
        process.wait(timeout=30)

    result = {
        "benchmark": "single-stream decode tokens/s",
        "tokens": sorted(counts),
        "threads": threads,
        "openvertex_tokens_per_s": server_runs,
        "llama_cpp_python_tokens_per_s": direct_runs,
        "openvertex_median": median(server_runs),
        "llama_cpp_python_median": median(direct_runs),
        "ratio": median(server_runs) / median(direct_runs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"openvertex (HTTP, streaming): {result['openvertex_median']:.1f} tok/s  {[round(r, 1) for r in server_runs]}"
    )
    direct = result["llama_cpp_python_median"]
    print(f"llama-cpp-python direct:      {direct:.1f} tok/s  {[round(r, 1) for r in direct_runs]}")
    print(f"ratio: {result['ratio']:.3f}  (target >= 0.9)  tokens per run: {sorted(counts)}")


if __name__ == "__main__":
    main()
