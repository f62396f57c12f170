"""Aggregate decode throughput and time to first token under concurrent streaming load.

Drives openvertex and llama-cpp-python's own server (`python -m llama_cpp.server`, same
model, same threads) with the same load — 1, 4, 8 and 16 concurrent streaming clients,
128 new tokens each — on loopback, and measures the raw batched-decode ceiling with
llama.cpp's low-level API in the same run, the three interleaved round by round. While openvertex
is saturated, /healthz is polled to show the event loop stays responsive.

    .venv/bin/pip install 'llama-cpp-python[server]'   # the peer's own dependencies
    .venv/bin/python benchmarks/concurrency.py [--levels 1 4 8 16] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median, quantiles
from typing import Any

import httpx
import llama_cpp
from llama_cpp._internals import LlamaModel
from llama_cpp._logger import set_verbose

from openvertex.backends.local.model import resolve_model_path

TOKENS = 128
FAILURES: list[str] = []
PROMPT = "Write a long, detailed story about a magic backpack that travels the world."
THREADS = os.cpu_count() or 1
MODEL_PATH = str(resolve_model_path("smollm2"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


def start_openvertex(slots: int) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = os.environ | {
        "OPENVERTEX_BACKENDS": json.dumps({"local": {"type": "local", "n_parallel": slots, "n_ctx": 1024}})
    }
    command = [sys.executable, "-m", "openvertex", "serve", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _wait_ready(f"http://127.0.0.1:{port}/readyz", process)
    return process, f"http://127.0.0.1:{port}"


def start_peer() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", MODEL_PATH, "--n_threads", str(THREADS)]
    command += ["--n_threads_batch", str(THREADS), "--n_ctx", "4096", "--host", "127.0.0.1", "--port", str(port)]
    # By default a new request interrupts the one streaming; queue them instead, as documented.
    command += ["--interrupt_requests", "False"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_ready(f"http://127.0.0.1:{port}/v1/models", process)
    return process, f"http://127.0.0.1:{port}"


def one_stream(base: str, seed: int) -> tuple[float, int, float]:
    """(seconds to first token, tokens, finish time) for one streaming request; a stream the
    server breaks off counts the tokens it delivered."""
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": TOKENS,
        "seed": seed,
        "temperature": 0.8,
        "stream": True,
    }
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    url = f"{base}/v1/chat/completions"
    try:
        with httpx.stream("POST", url, json=body, headers={"Authorization": "Bearer b"}, timeout=600) as r:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = first or time.perf_counter() - started
                    tokens += 1  # one token a chunk when idle; usage corrects it below
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError as error:
        print(f"  {base}: stream {seed} broke off after {tokens} tokens: {error}", file=sys.stderr)
        FAILURES.append(base)
    return first, tokens, time.perf_counter()


def load(base: str, clients: int) -> dict[str, Any]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(lambda i: one_stream(base, 1000 + i), range(clients)))
    elapsed = max(end for _, _, end in results) - started
    return {
        "clients": clients,
        "tokens": sum(t for _, t, _ in results),
        "tokens_per_s": sum(t for _, t, _ in results) / elapsed,
        "ttft_median_s": median(f for f, _, _ in results),
    }


def healthz_during(base: str, work: Any) -> tuple[Any, list[float]]:
    """Run `work` while polling /healthz every 20 ms. http.client, not httpx: httpx's keep-alive
    requests stall ~40 ms in the client here (curl and http.client see ~1 ms)."""
    latencies: list[float] = []
    done = threading.Event()
    host, port = base.removeprefix("http://").split(":")

    def poll() -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        while not done.is_set():
            started = time.perf_counter()
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
        connection.close()

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        return work(), latencies
    finally:
        done.set()
        poller.join()


def raw_ceiling(sequences: int) -> float:
    """Tokens/s of llama_decode over `sequences` streams, one token each a step, no server."""
    set_verbose(False)
    model = LlamaModel(path_model=MODEL_PATH, params=llama_cpp.llama_model_default_params(), verbose=False)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 1024 * sequences, 512, 512, sequences
    params.n_threads = params.n_threads_batch = THREADS
    params.kv_unified = False
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = llama_cpp.llama_init_from_model(model.model, params)
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    prompt = model.tokenize(PROMPT.encode(), True, False)

    def decode(entries: list[tuple[int, int, int]]) -> None:
        batch.n_tokens = len(entries)
        for i, (token, pos, seq) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, True
            batch.seq_id[i][0] = seq
        assert llama_cpp.llama_decode(ctx, batch) == 0

    for seq in range(sequences):
        decode([(t, p, seq) for p, t in enumerate(prompt)])
    started = time.perf_counter()
    for step in range(TOKENS):
        decode([(prompt[-1], len(prompt) + step, seq) for seq in range(sequences)])
    rate = sequences * TOKENS / (time.perf_counter() - started)
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    model.close()
    return rate


def _median_of(rounds: list[dict[str, Any]], key: str) -> float:
    return median(r[key] for r in rounds)


def measure_level(ov: str, peer: str, clients: int, rounds: int) -> dict[str, Any]:
    """Interleave openvertex, the peer and the raw ceiling round by round, so this VM's drift
    (±20% between minutes) lands on all three alike; ratios are medians of per-round ratios."""
    per_round: list[dict[str, Any]] = []
    for _ in range(rounds):
        measured, health = healthz_during(ov, lambda: load(ov, clients))
        peer_measured = load(peer, clients)
        raw = raw_ceiling(clients)
        per_round.append(
            {
                "openvertex_tokens_per_s": measured["tokens_per_s"],
                "peer_tokens_per_s": peer_measured["tokens_per_s"],
                "raw_tokens_per_s": raw,
                "openvertex_ttft_median_s": measured["ttft_median_s"],
                "peer_ttft_median_s": peer_measured["ttft_median_s"],
                "healthz_p99_s": quantiles(health, n=100)[98] if len(health) >= 2 else health[0],
                "ratio_vs_peer": measured["tokens_per_s"] / peer_measured["tokens_per_s"],
                "ratio_vs_raw": measured["tokens_per_s"] / raw,
                "ttft_ratio_vs_peer": measured["ttft_median_s"] / peer_measured["ttft_median_s"],
            }
        )
    return {key: _median_of(per_round, key) for key in per_round[0]} | {"rounds": per_round}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/concurrency.json"))
    args = parser.parse_args()
    result: dict[str, Any] = {"tokens_per_client": TOKENS, "threads": THREADS, "levels": {}}

    ov_process, ov = start_openvertex(max(args.levels))
    peer_process, peer = start_peer()  # both idle (no CPU) while the other is driven
    try:
        load(ov, 1)  # warm-up
        load(peer, 1)
        for clients in args.levels:
            result["levels"][str(clients)] = measure_level(ov, peer, clients, args.rounds)
    finally:
        for process in (ov_process, peer_process):
            process.terminate()
            process.wait(timeout=30)

    print(f"medians of {args.rounds} interleaved rounds")
    print(
        f"{'clients':>7} {'openvertex tok/s':>17} {'peer tok/s':>11} {'raw tok/s':>10} {'vs peer':>8} {'vs raw':>7}"
        f" {'TTFT ov':>8} {'TTFT peer':>9} {'healthz p99':>11}"
    )
    for clients, level in result["levels"].items():
        print(
            f"{clients:>7} {level['openvertex_tokens_per_s']:>17.1f} {level['peer_tokens_per_s']:>11.1f}"
            f" {level['raw_tokens_per_s']:>10.1f} {level['ratio_vs_peer']:>8.2f} {level['ratio_vs_raw']:>7.2f}"
            f" {level['openvertex_ttft_median_s']:>8.3f} {level['peer_ttft_median_s']:>9.3f}"
            f" {level['healthz_p99_s'] * 1000:>9.1f}ms"
        )
    result["broken_streams"] = len(FAILURES)
    print(f"streams broken off: {len(FAILURES)} ({', '.join(sorted(set(FAILURES))) or 'none'})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
