"""Cancellation soak: many streams abandoned at random points; slots must come back, RSS stay flat.

Runs openvertex in its own process, opens `--streams` streaming requests (up to
`--concurrency` at a time, n of 1 or 2, some with a grammar), reads a random number of
events from each and hangs up. Records the server's resident memory (from /proc) along
the way and reads /metrics at the end: no sequence may still be running.

    .venv/bin/python benchmarks/cancellation.py [--streams 1000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

MODEL = "google/gemini-2.5-flash"
PATH = "/v1beta1/projects/p/locations/us-central1/endpoints/openapi/chat/completions"


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match
    return int(match.group(1)) / 1024


def metric(base: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", httpx.get(f"{base}/metrics").text, re.MULTILINE)
    assert match
    return float(match.group(1))


def abandon(base: str, seed: int) -> None:
    rng = random.Random(seed)
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Tell me story number {seed}."}],
        "stream": True,
        "n": rng.choice([1, 1, 2]),
        "seed": seed,
    }
    if rng.random() < 0.3:
        body["response_format"] = {"type": "json_object"}
    with httpx.stream("POST", base + PATH, json=body, headers={"Authorization": "Bearer soak"}, timeout=120) as r:
        lines = r.iter_lines()
        for _ in range(rng.randint(0, 40)):
            if next(lines, None) is None:
                break


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cancellation.json"))
    args = parser.parse_args()

    command = [sys.executable, "-m", "openvertex", "serve", "--port", "0", "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    base = process.stdout.readline().split()[-1]
    while httpx.get(f"{base}/readyz").status_code != 200:
        time.sleep(0.05)
    samples: list[tuple[int, float]] = []
    try:
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            done = 0
            for start in range(0, args.streams, 100):
                list(pool.map(lambda s: abandon(base, s), range(start, min(start + 100, args.streams))))
                done = min(start + 100, args.streams)
                samples.append((done, rss_mib(process.pid)))
                print(f"{done:>5} streams abandoned, server RSS {samples[-1][1]:.1f} MiB", flush=True)
        deadline = time.monotonic() + 10
        while metric(base, "openvertex_sequences_running") and time.monotonic() < deadline:
            time.sleep(0.05)
        running = metric(base, "openvertex_sequences_running")
        waiting = metric(base, "openvertex_requests_waiting")
    finally:
        process.terminate()
        process.wait(timeout=30)
    first, last = samples[0][1], samples[-1][1]
    result = {
        "streams": args.streams,
        "rss_mib_by_streams": samples,
        "rss_growth_mib_after_first_100": last - first,
        "sequences_running_at_end": running,
        "requests_waiting_at_end": waiting,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"running at end: {running:g}, waiting: {waiting:g}; RSS {first:.1f} -> {last:.1f} MiB ({last - first:+.1f})")


if __name__ == "__main__":
    main()
