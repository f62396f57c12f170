"""Decode speed with a grammar active (JSON Schema, and a forced function call) vs free text.

Same model, prompt and sampling in one openvertex server; the three kinds of request
alternate round by round so this VM's drift lands on all alike. Decode speed is tokens
after the first one divided by the time from the first streamed token to the last.

    .venv/bin/python benchmarks/grammar_speed.py [--rounds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import median
from typing import Any

import httpx
from decode_speed import PATH, start_server

PROMPT = "List twenty cities of the world with their country and a landmark in each, as JSON."
SCHEMA = {
    "type": "object",
    "properties": {
        "cities": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "country": {"type": "string"},
                    "landmark": {"type": "string"},
                },
                "required": ["city", "country", "landmark"],
            },
        }
    },
    "required": ["cities"],
}
KINDS: dict[str, dict[str, Any]] = {
    "free_text": {},
    "json_schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "cities", "schema": SCHEMA}}},
    "function_call": {
        "tools": [{"type": "function", "function": {"name": "save_cities", "parameters": SCHEMA}}],
        "tool_choice": "required",
        # pieces as they are written, so the stream shows the decode speed
        "extra_body": {"google": {"stream_function_call_arguments": True}},
    },
}


def decode(base: str, extra: dict[str, Any], tokens: int) -> tuple[float, int]:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens}
    body |= {"temperature": 0, "stream": True} | extra
    first = last = 0.0
    generated = 0
    with httpx.stream("POST", base + PATH, json=body, headers={"Authorization": "Bearer b"}, timeout=300) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            now = time.perf_counter()
            chunk = json.loads(line[6:])
            delta = chunk["choices"][0]["delta"] if chunk["choices"] else {}
            if delta.get("content") or delta.get("tool_calls"):
                first = first or now
                last = now
            if chunk.get("usage"):
                generated = chunk["usage"]["completion_tokens"]
    return (generated - 1) / (last - first), generated


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grammar_speed.json"))
    args = parser.parse_args()
    process, base = start_server()
    runs: dict[str, list[float]] = {kind: [] for kind in KINDS}
    counts: dict[str, list[int]] = {kind: [] for kind in KINDS}
    try:
        decode(base, {}, 16)  # warm-up
        for _ in range(args.rounds):
            for kind, extra in KINDS.items():
                rate, generated = decode(base, extra, args.tokens)
                runs[kind].append(rate)
                counts[kind].append(generated)
    finally:
        process.terminate()
        process.wait(timeout=30)
    result: dict[str, Any] = {"tokens": counts, "tokens_per_s": runs}
    result["median_tokens_per_s"] = {kind: median(rates) for kind, rates in runs.items()}
    free = result["median_tokens_per_s"]["free_text"]
    result["ratio_vs_free_text"] = {kind: rate / free for kind, rate in result["median_tokens_per_s"].items()}
    for kind in KINDS:
        print(
            f"{kind:>14}: {result['median_tokens_per_s'][kind]:6.1f} tok/s (median of {args.rounds};"
            f" {min(counts[kind])}–{max(counts[kind])} tokens)  ratio {result['ratio_vs_free_text'][kind]:.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
