"""Context caching on the embedded model: time to first token on a cached context vs the same prompt cold.

Runs openvertex in its own process (state in a scratch directory). The context is a document
of about `--tokens` tokens; each measurement is a streamGenerateContent (alt=sse) whose time to
first token is read at the first event that carries text.

- cold: the document sent in full, with a fresh nonce in front each time, so nothing is reused;
- cached (restored): a request on a context cache after two cold requests took both slots, so
  the prefix's KV comes from the cache's in-memory snapshot, not from a slot;
- after a restart: a new process on the same state_dir, first request on the cache (KV read from disk).

Also reports the KV bytes each cached token costs (the snapshot on disk over the cache's tokens).

    .venv/bin/python benchmarks/context_cache.py [--tokens 2000] [--repeats 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

MODEL = "gemini-2.5-flash"
PARENT = "/v1beta1/projects/bench/locations/us-central1"
HEADERS = {"authorization": "Bearer bench"}
CONFIG = """
[backends.local]
type = "local"
n_parallel = 2
n_ctx = 4096
"""


@contextmanager
def server(state_dir: Path) -> Iterator[str]:
    config = state_dir / "openvertex.toml"
    config.write_text(f'state_dir = "{state_dir}"\n' + CONFIG)
    command = [sys.executable, "-m", "openvertex", "serve", "--port", "0", "--config", str(config)]
    command += ["--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    base = process.stdout.readline().split()[-1]
    try:
        while httpx.get(f"{base}/readyz").status_code != 200:
            time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=60)


def document(nonce: str, sentences: int) -> str:
    colours = ("red", "blue", "green", "white", "black")
    facts = (f"Fact {i}: the lighthouse on island {i} is painted {colours[i % 5]}." for i in range(sentences))
    return f"Document {nonce}. " + " ".join(facts)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "parts": [{"text": text}]}


def ttft(base: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Seconds to the first event with text, and the last event's usage."""
    body = {**body, "generationConfig": {"maxOutputTokens": 8, "temperature": 0}}
    url = f"{base}{PARENT}/publishers/google/models/{MODEL}:streamGenerateContent?alt=sse"
    started = time.perf_counter()
    first: float | None = None
    usage: dict[str, Any] = {}
    with httpx.stream("POST", url, json=body, headers=HEADERS, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            parts = (event.get("candidates") or [{}])[0].get("content", {}).get("parts", [])
            if first is None and any(p.get("text") for p in parts):
                first = time.perf_counter() - started
            usage = event.get("usageMetadata") or usage
    assert first is not None, "no text in the answer"
    return first, usage


def sentences_for(base: str, tokens: int) -> int:
    """How many sentences make a document of about `tokens` tokens (countTokens, the real tokenizer)."""
    url = f"{base}{PARENT}/publishers/google/models/{MODEL}:countTokens"
    per = (
        httpx.post(url, json={"contents": [user(document("x", 100))]}, headers=HEADERS, timeout=300).json()[
            "totalTokens"
        ]
        / 100
    )
    return int(tokens / per)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/context_cache.json"))
    args = parser.parse_args()

    state_dir = Path(tempfile.mkdtemp(prefix="openvertex-cache-bench-"))
    cold: list[float] = []
    restored: list[float] = []
    with server(state_dir) as base:
        sentences = sentences_for(base, args.tokens)
        created = httpx.post(
            f"{base}{PARENT}/cachedContents",
            json={
                "model": f"{PARENT[9:]}/publishers/google/models/{MODEL}",
                "contents": [user(document("cached", sentences))],
            },
            headers=HEADERS,
            timeout=300,
        ).json()
        name, cached_tokens = created["name"], created["usageMetadata"]["totalTokenCount"]
        print(f"context cache of {cached_tokens} tokens: {name}", flush=True)
        ttft(base, {"contents": [user(document("warm-up", 20) + " Which lighthouse is red?")]})
        for repeat in range(args.repeats):
            for slot in range(2):  # two cold requests take both slots: the cache cannot be reused from one
                seconds, usage = ttft(
                    base, {"contents": [user(document(f"cold-{repeat}-{slot}", sentences) + " Which?")]}
                )
                cold.append(seconds)
            seconds, usage = ttft(
                base, {"cachedContent": name, "contents": [user(f"Question {repeat}: which is red?")]}
            )
            assert usage.get("cachedContentTokenCount") == cached_tokens, usage
            restored.append(seconds)
            print(f"cold {cold[-1] * 1000:7.1f} ms   cached {seconds * 1000:6.1f} ms", flush=True)
    snapshots = list((state_dir / "kv" / "local").glob("*.kv"))
    kv_bytes = max(path.stat().st_size for path in snapshots)
    with server(state_dir) as base:
        after_restart, usage = ttft(
            base, {"cachedContent": name, "contents": [user("After a restart: which is blue?")]}
        )
        assert usage.get("cachedContentTokenCount") == cached_tokens, usage
    cold_ms = statistics.median(cold) * 1000
    restored_ms = statistics.median(restored) * 1000
    result = {
        "cached_tokens": cached_tokens,
        "cold_ttft_ms_median": cold_ms,
        "cached_ttft_ms_median": restored_ms,
        "cached_over_cold": restored_ms / cold_ms,
        "after_restart_ttft_ms": after_restart * 1000,
        "after_restart_over_cold": after_restart * 1000 / cold_ms,
        "kv_bytes_per_cached_token": kv_bytes / cached_tokens,
        "cold_ttft_ms": [s * 1000 for s in cold],
        "cached_ttft_ms": [s * 1000 for s in restored],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"time to first token on a {cached_tokens}-token context: cold {cold_ms:.1f} ms, cached {restored_ms:.1f} ms "
        f"({result['cached_over_cold']:.3f}x), after a restart {after_restart * 1000:.1f} ms "
        f"({result['after_restart_over_cold']:.3f}x); KV {kv_bytes / cached_tokens / 1024:.1f} KiB per cached token"
    )


if __name__ == "__main__":
    main()
