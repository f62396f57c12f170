"""Aggregate streaming throughput of this tree against another checkout of openvertex (an
earlier commit, say), same model and settings, interleaved round by round so this VM's drift
lands on both alike; the ratio is the median of per-round ratios.

    git worktree add /tmp/openvertex-before <commit>
    .venv/bin/python benchmarks/before_after.py /tmp/openvertex-before [--clients 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import median
from typing import Any

from concurrency import _free_port, _wait_ready, load


def start(source: Path, slots: int) -> tuple[subprocess.Popen[bytes], str]:
    """openvertex from `source`/src, whatever is installed in this environment besides."""
    port = _free_port()
    env = os.environ | {
        "PYTHONPATH": str(source / "src"),
        "OPENVERTEX_BACKENDS": json.dumps({"local": {"type": "local", "n_parallel": slots, "n_ctx": 1024}}),
    }
    command = [sys.executable, "-m", "openvertex", "serve", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _wait_ready(f"http://127.0.0.1:{port}/readyz", process)
    return process, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("baseline", type=Path, help="a checkout of openvertex to compare with")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/before_after.json"))
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    servers = {"this tree": start(here, args.clients), "baseline": start(args.baseline.resolve(), args.clients)}
    rounds: list[dict[str, Any]] = []
    try:
        for _, base in servers.values():
            load(base, 1)  # warm-up
        for _ in range(args.rounds):
            measured = {name: load(base, args.clients)["tokens_per_s"] for name, (_, base) in servers.items()}
            rounds.append(measured | {"ratio": measured["this tree"] / measured["baseline"]})
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    result = {key: median(r[key] for r in rounds) for key in rounds[0]} | {"clients": args.clients, "rounds": rounds}
    print(
        f"{args.clients} streaming clients, medians of {args.rounds} interleaved rounds: this tree "
        f"{result['this tree']:.1f} tok/s, baseline {result['baseline']:.1f} tok/s, ratio {result['ratio']:.2f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
