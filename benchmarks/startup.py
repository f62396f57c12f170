"""Start-up time: from `openvertex serve` being launched to /readyz answering 200 (model loaded).

.venv/bin/python benchmarks/startup.py [--rounds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import httpx


def once() -> tuple[float, float]:
    """(seconds to the first /healthz, seconds to /readyz) after launch."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "openvertex", "serve", "--port", "0", "--log-level", "warning"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        base = process.stdout.readline().split()[-1]
        alive = ready = 0.0
        try:
            while not ready and time.perf_counter() - started < 60:
                try:
                    alive = alive or (httpx.get(f"{base}/healthz").status_code == 200 and time.perf_counter() - started)
                    if httpx.get(f"{base}/readyz").status_code == 200:
                        ready = time.perf_counter() - started
                except httpx.TransportError:
                    pass
                time.sleep(0.01)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return alive, ready


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/startup.json"))
    args = parser.parse_args()
    runs = [once() for _ in range(args.rounds)]
    result = {
        "benchmark": "seconds from launch to /healthz and to /readyz",
        "healthz_s": [round(a, 3) for a, _ in runs],
        "readyz_s": [round(r, 3) for _, r in runs],
        "readyz_median_s": round(median(r for _, r in runs), 3),
        "target_s": 5.0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"alive after {result['healthz_s']} s; ready after {result['readyz_s']} s")
    print(f"median to ready: {result['readyz_median_s']} s (target < 5 s)")


if __name__ == "__main__":
    main()
