"""What API keys and quotas cost per request: openvertex with an issued key carrying quotas
(requests, tokens and requests in flight per minute, all far above the load), its state in
SQLite and in PostgreSQL (a server started here from Debian's binaries, on a Unix socket), against
openvertex with no keys, on the shared harness's zero-cost Gemini upstream, in one run.

Both servers run side by side on the same upstream; rounds alternate between them (the machine's
speed drifts), and the medians are compared: requests/s at 32 clients and the median latency at
one client, for the translation path (OpenAI request → Gemini upstream), not streaming. Target
(issue 13): the key check and the quota accounting cost at most 0.2 ms a request.

    .venv/bin/python benchmarks/keys.py [--rounds 5] [--out benchmarks/results/keys.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from gateway import ENV, HARNESS, REPO, TRANSLATION_PATH, Processes, free_port, wait_until

sys.path.insert(0, str(REPO))
from tests.support.postgres import binaries, postgres_server

TARGET_MS = 0.2
BODY = json.dumps({"model": "zero-gemini", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16})


def config(work: Path, upstream: str, database_url: str | None) -> Path:
    path = work / "openvertex.toml"
    shared = f'database_url = "{database_url}"\n' if database_url else ""
    path.write_text(
        f'state_dir = "{work / "state"}"\n{shared}\n[backends.gemini]\ntype = "gemini"\napi = "gemini"\n'
        f'api_key = "zero"\nbase_url = "{upstream}"\n\n[[routes]]\nmodel = "zero-gemini"\nbackend = "gemini"\n'
    )
    return path


def start(
    procs: Processes, work: Path, upstream: str, *, with_key: bool, database_url: str | None = None
) -> tuple[str, str]:
    """An openvertex (base URL) and the token its clients send."""
    work.mkdir()
    path = config(work, upstream, database_url)
    token = "anything"
    if with_key:
        create = [sys.executable, "-m", "openvertex", "keys", "--config", str(path), "create", "bench"]
        create += ["--rpm", "100000000", "--tpm", "1000000000", "--concurrent", "10000"]
        env = {k: v for k, v in ENV.items() if not k.startswith("OPENVERTEX_")}
        token = subprocess.run(create, env=env, capture_output=True, text=True, check=True).stdout.strip()
    command = [sys.executable, "-m", "openvertex", "serve", "--port", "0", "--config", str(path)]
    process = procs.start(work.name, [*command, "--log-level", "warning"], work / "log", pipe=True)
    assert process.stdout is not None
    base = process.stdout.readline().decode().split()[-1]
    threading.Thread(target=process.stdout.read, daemon=True).start()
    wait_until(f"{base}/readyz", process, work / "log", 60)
    return base, token


def load(base: str, token: str, clients: int, n: int) -> dict[str, Any]:
    command = [sys.executable, str(HARNESS / "loadgen.py"), "--url", base + TRANSLATION_PATH, "--body", BODY]
    command += ["-n", str(n), "-c", str(clients), "-H", f"Authorization: Bearer {token}"]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    if result.get("errors"):
        raise RuntimeError(f"{result['errors']} errors at {base}: {done.stdout[:500]}")
    return result


def measure(servers: dict[str, tuple[str, str]], rounds: int) -> dict[str, dict[str, list[float]]]:
    for base, token in servers.values():
        load(base, token, 1, 300)  # warm up
    figures: dict[str, dict[str, list[float]]] = {name: {"rps_32": [], "p50_ms_1": []} for name in servers}
    for _ in range(rounds):  # interleaved: the machine's speed drifts
        for name, (base, token) in servers.items():
            figures[name]["rps_32"].append(load(base, token, 32, 3000)["rps"])
            figures[name]["p50_ms_1"].append(load(base, token, 1, 1000)["p50_ms"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "keys.json")
    args = parser.parse_args()
    procs = Processes()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        try:
            port = free_port()
            up = procs.start(
                "zero upstream",
                [sys.executable, str(HARNESS / "zero_upstream.py"), "--port", str(port)],
                work / "up.log",
            )
            upstream = f"http://127.0.0.1:{port}"
            wait_until(f"{upstream}/health", up, work / "up.log", 30)
            servers = {"off": start(procs, work / "off", upstream, with_key=False)}
            servers["sqlite"] = start(procs, work / "sqlite", upstream, with_key=True)
            with contextlib.ExitStack() as stack:
                if binaries() is not None:
                    url = stack.enter_context(postgres_server())
                    servers["postgres"] = start(procs, work / "postgres", upstream, with_key=True, database_url=url)
                figures = measure(servers, args.rounds)
                procs.stop_all()  # before the database goes
        finally:
            procs.stop_all()
    medians = {name: {k: statistics.median(v) for k, v in f.items()} for name, f in figures.items()}
    costs = {}
    for name in medians.keys() - {"off"}:
        per_request_ms = (1 / medians[name]["rps_32"] - 1 / medians["off"]["rps_32"]) * 1000
        costs[name] = {
            "ms_per_request_at_32_clients": round(per_request_ms, 4),
            "added_p50_ms_at_1_client": round(medians[name]["p50_ms_1"] - medians["off"]["p50_ms_1"], 4),
        }
    sqlite = costs["sqlite"]
    result = {
        "rounds": args.rounds,
        "figures": figures,
        "medians": medians,
        "cost_of_keys_and_quotas": costs,
        "target_ms_on_sqlite": TARGET_MS,
        "meets_target": max(sqlite.values()) <= TARGET_MS,
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
