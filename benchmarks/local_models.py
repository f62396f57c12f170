"""Several local models in one process: what a second model's first request costs, and what two
engines computing at once do to each other.

- load: openvertex with two chat backends on the same model file, the second loaded on first use
  (and the embedding model, also on first use). The time from a request to the second model to
  its answer (its load included), against the same request once it is loaded; and the resident
  memory with one chat model loaded, then both.
- sharing: the default configuration (the chat model and the embedding model). Aggregate tok/s of
  4 clients streaming chat completions alone; texts/s of 4 clients embedding batches of 32 texts
  alone; then both at once, for the same time. With `--compare SRC`, the same server from another
  checkout's `src` (a worktree of an earlier commit) is measured in the same run, interleaved.

    .venv/bin/python -m benchmarks.local_models [--seconds 20] [--compare ../before/src] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks.concurrency import _free_port, _wait_ready
from benchmarks.llama_server import AUTH, THREADS, cpu_facts, one_stream, stop_all

TWO_MODELS = f"""
[backends.first]
type = "local"
n_threads = {THREADS}

[backends.second]
type = "local"
n_threads = {THREADS}
load = "first_use"

[[routes]]
model = "first"
backend = "first"

[[routes]]
model = "second"
backend = "second"
"""


def start(config: str | None, src: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = dict(os.environ)
    env.pop("OPENVERTEX_BACKENDS", None)
    if src is not None:  # another checkout's code, with this environment's packages
        env["PYTHONPATH"] = src
    command = [sys.executable, "-m", "openvertex", "serve", "--port", str(port), "--log-level", "warning"]
    if config is not None:
        path = Path(tempfile.mkdtemp()) / "openvertex.toml"
        path.write_text(config)
        command += ["--config", str(path)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _wait_ready(f"http://127.0.0.1:{port}/readyz", process)
    return process, f"http://127.0.0.1:{port}"


def answer_s(base: str, model: str) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8, "seed": 1}
    started = time.perf_counter()
    response = httpx.post(f"{base}/v1/chat/completions", json=body, headers=AUTH, timeout=600)
    response.raise_for_status()
    return time.perf_counter() - started


def rss_mib(process: subprocess.Popen[bytes]) -> float:
    status = Path(f"/proc/{process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def load_figures() -> dict[str, float]:
    process, base = start(TWO_MODELS)
    try:
        figures = {"first_answer_s": answer_s(base, "first")}
        figures["rss_one_model_mib"] = rss_mib(process)
        figures["second_first_answer_s"] = answer_s(base, "second")  # its load, then the answer
        figures["second_loaded_answer_s"] = answer_s(base, "second")
        figures["rss_two_models_mib"] = rss_mib(process)
    finally:
        stop_all([process])
    return figures


def embed_batch(base: str, number: int) -> int:
    texts = [f"Sentence {number}-{i} about the weather in a city." for i in range(32)]
    body = {"model": "text-embedding-005", "input": texts}
    response = httpx.post(f"{base}/v1/embeddings", json=body, headers=AUTH, timeout=600)
    response.raise_for_status()
    return len(texts)


def for_seconds(seconds: float, clients: int, work: Callable[[int], int]) -> Callable[[], float]:
    """Start `clients` threads doing `work` until `seconds` pass; the returned call waits and
    gives the units done per second."""
    done: list[int] = []
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    def client(number: int) -> None:
        count = 0
        while time.perf_counter() < deadline:
            count += work(number * 100_000 + count)
        done.append(count)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()

    def finish() -> float:
        for thread in threads:
            thread.join()
        return sum(done) / (time.perf_counter() - started)

    return finish


def sharing_figures(base: str, seconds: float) -> dict[str, float]:
    def chat(seed: int) -> int:
        return one_stream(base, seed)[1]

    def embed(number: int) -> int:
        return embed_batch(base, number)

    embed(0)  # loads the embedding model where it loads on first use
    figures = {
        "chat_alone_tok_s": for_seconds(seconds, 4, chat)(),
        "embed_alone_texts_s": for_seconds(seconds, 4, embed)(),
    }
    chatting, embedding = for_seconds(seconds, 4, chat), for_seconds(seconds, 4, embed)
    figures["chat_beside_embed_tok_s"] = chatting()
    figures["embed_beside_chat_texts_s"] = embedding()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--compare", help="another checkout's src directory, measured in the same run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/local_models.json"))
    args = parser.parse_args()
    result: dict[str, Any] = {"threads": THREADS, "cpu": cpu_facts(), "load": load_figures(), "sharing": {}}
    builds = {"this build": None} | ({"compared": args.compare} if args.compare else {})
    for name, src in builds.items():
        process, base = start(None, src)
        try:
            result["sharing"][name] = sharing_figures(base, args.seconds)
        finally:
            stop_all([process])
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
