"""Resident memory of the embedded engine against llama.cpp's own server, with the KV options.

Starts, one after the other and then all kept running, openvertex in its default configuration
(the embedded model and the embedding model), openvertex with only the local backend (the
difference is the embedding model's share) and with each KV option, and llama-server (built as
benchmarks/llama_server.py builds it, from the llama.cpp llama-cpp-python vendors) with the same
model file, slots and context (`-np 8 -c 8*4096`; with -np given its KV is a stream per slot, not
unified, unless asked) and with one 4,096-token slot. For each server:

- idle: after the load, before any request (llama.cpp's compute buffers are reserved, not yet
  touched), and again after the load test;
- under load: the peak while 8 clients stream 128 tokens each, and the aggregate tok/s (the
  servers driven in turn, the order rotated every round);

each from /proc/<pid>/status (VmRSS, and its anonymous part: the KV and compute buffers; the
file part is the mmapped model) and /proc/<pid>/smaps_rollup (PSS: the model file's pages are
shared among the servers running at once, so PSS splits them; RSS counts them whole in each).

    .venv/bin/python -m benchmarks.memory [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

from benchmarks.concurrency import _free_port, _wait_ready
from benchmarks.llama_server import MODEL_PATH, THREADS, build_tools, cpu_facts, load, stop_all

N_CTX = 4096  # per sequence: openvertex's default, and llama-server's -c / -np
SLOTS = 8
CLIENTS = 8
MIB = 1 << 20
LOCAL: dict[str, Any] = {"type": "local", "n_threads": THREADS}
# name: OPENVERTEX_BACKENDS (None: the default configuration, embedding model included).
OPENVERTEX: dict[str, dict[str, Any] | None] = {
    "openvertex default": None,
    "openvertex local only": {"local": LOCAL},
    "openvertex fa=off": {"local": LOCAL | {"flash_attention": "off"}},  # the KV reserved whole
    "openvertex q8_0": {"local": LOCAL | {"kv_type": "q8_0"}},
    "openvertex unified": {"local": LOCAL | {"kv_unified": True}},
}
# name: (slots, llama-server's own flags beyond model, threads, context and slots).
LLAMA_SERVER: dict[str, tuple[int, list[str]]] = {
    "llama-server -np 8": (SLOTS, []),
    "llama-server -np 8 q8_0": (SLOTS, ["-ctk", "q8_0", "-ctv", "q8_0"]),
    "llama-server -np 1": (1, []),  # idle only: one slot would queue 8 clients
}


def start_openvertex(backends: dict[str, Any] | None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = dict(os.environ)
    env.pop("OPENVERTEX_BACKENDS", None)
    if backends is not None:
        env["OPENVERTEX_BACKENDS"] = json.dumps(backends)
    command = [sys.executable, "-m", "openvertex", "serve", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _wait_ready(f"http://127.0.0.1:{port}/readyz", process)
    return process, f"http://127.0.0.1:{port}"


def start_llama_server(tools: Path, slots: int, flags: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    command = [str(tools / "llama-server"), "-m", MODEL_PATH, "-t", str(THREADS), "-tb", str(THREADS)]
    command += ["-c", str(N_CTX * slots), "-np", str(slots), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--no-webui", "-lv", "0", *flags]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_ready(f"http://127.0.0.1:{port}/health", process)
    return process, f"http://127.0.0.1:{port}"


def resident(pid: int, *, pss: bool = True) -> dict[str, float]:
    """MiB: VmRSS and its anonymous and file parts; PSS where asked."""
    fields = _fields(Path(f"/proc/{pid}/status").read_text())
    memory = {"rss": fields["VmRSS"], "anon": fields["RssAnon"], "file": fields["RssFile"]}
    if pss:
        memory["pss"] = _fields(Path(f"/proc/{pid}/smaps_rollup").read_text())["Pss"]
    return memory


def _fields(text: str) -> dict[str, float]:
    """The `Name:   123 kB` lines of a /proc file, in MiB."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            values[name] = int(parts[0]) / 1024
    return values


def peak_during(pid: int, work: Callable[[], dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """`work`'s result, and the largest of each memory figure sampled while it ran (RSS every
    20 ms, PSS, which walks every mapping, every 200 ms)."""
    peak: dict[str, float] = {}
    done = threading.Event()

    def sample() -> None:
        count = 0
        while not done.is_set():
            for name, value in resident(pid, pss=count % 10 == 0).items():
                peak[name] = max(peak.get(name, 0.0), value)
            count += 1
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = work()
    finally:
        done.set()
        sampler.join()
    return result, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory.json"))
    args = parser.parse_args()
    tools = build_tools([])  # llama.cpp's default flags, as benchmarks/llama_server.py's default
    started: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    idle: dict[str, dict[str, float]] = {}
    per_round: list[dict[str, Any]] = []
    try:
        for name, backends in OPENVERTEX.items():
            started[name] = start_openvertex(backends)
            time.sleep(2)  # the loading threads settle
            idle[name] = resident(started[name][0].pid)
        for name, (slots, flags) in LLAMA_SERVER.items():
            started[name] = start_llama_server(tools, slots, flags)
            time.sleep(2)
            idle[name] = resident(started[name][0].pid)
        driven = [name for name in started if LLAMA_SERVER.get(name, (SLOTS, []))[0] == SLOTS]
        for name in driven:
            load(started[name][1], 1, 0)  # warm-up
        for number in range(1, args.rounds + 1):
            order = driven[number % len(driven) :] + driven[: number % len(driven)]
            measured: dict[str, Any] = {}
            for name in order:
                process, base = started[name]
                figures, peak = peak_during(process.pid, lambda base=base, number=number: load(base, CLIENTS, number))
                measured[name] = figures | {"peak": peak}
            per_round.append(measured)
        after = {name: resident(process.pid) for name, (process, _) in started.items()}
    finally:
        stop_all([process for process, _ in started.values()])
    result = summary(idle, after, per_round) | {"threads": THREADS, "n_ctx": N_CTX, "slots": SLOTS, "cpu": cpu_facts()}
    result["rounds"] = per_round
    report(result, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def summary(
    idle: dict[str, dict[str, float]], after: dict[str, dict[str, float]], per_round: list[dict[str, Any]]
) -> dict[str, Any]:
    """Per server: idle figures, the highest peak of any round, the median tok/s, and ratios to
    openvertex's default (tok/s: the median of each round's ratio, so drift lands on both)."""
    base = "openvertex default"
    servers: dict[str, Any] = {}
    for name, resting in idle.items():
        figures: dict[str, Any] = {"idle": resting, "idle_after_load": after[name]}
        if per_round and name in per_round[0]:
            rounds = [r[name] for r in per_round]
            figures["under_load_peak"] = {k: max(r["peak"][k] for r in rounds) for k in rounds[0]["peak"]}
            figures["tokens_per_s"] = median(r["tokens_per_s"] for r in rounds)
            figures["tokens_per_s_vs_default"] = median(
                r[name]["tokens_per_s"] / r[base]["tokens_per_s"] for r in per_round
            )
        figures["idle_rss_vs_default"] = resting["rss"] / idle[base]["rss"]
        servers[name] = figures
    embedding = {k: idle[base][k] - idle["openvertex local only"][k] for k in idle[base]}
    return {"servers": servers, "embedding_model_share_idle": embedding}


def report(result: dict[str, Any], rounds: int) -> None:
    print(
        f"{result['slots']} slots x {result['n_ctx']} tokens, {CLIENTS} clients x 128 tokens, {rounds} rounds,"
        f" {result['threads']} threads, {result['cpu']['model']}; MiB"
    )
    header = ("server", "idle RSS", "anon", "PSS", "load RSS", "anon", "after RSS", "tok/s", "vs default")
    print(f"{header[0]:<26}" + "".join(f"{h:>11}" for h in header[1:]))
    for name, figures in result["servers"].items():
        idle, after = figures["idle"], figures["idle_after_load"]
        peak = figures.get("under_load_peak", {})
        cells = [idle["rss"], idle["anon"], idle["pss"], peak.get("rss"), peak.get("anon"), after["rss"]]
        cells += [figures.get("tokens_per_s"), figures.get("tokens_per_s_vs_default")]
        print(f"{name:<26}" + "".join(f"{c:>11.1f}" if c is not None else f"{'-':>11}" for c in cells[:7]), end="")
        print(f"{cells[7]:>11.2f}" if cells[7] is not None else f"{'-':>11}")
    share = result["embedding_model_share_idle"]
    print(f"the embedding model's share of the default's idle memory: RSS {share['rss']:.1f}, PSS {share['pss']:.1f}")


if __name__ == "__main__":
    main()
