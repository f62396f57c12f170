"""openvertex against llama.cpp's own server, built from the very llama.cpp that the pinned
llama-cpp-python vendors, in one interleaved run.

Builds (once, cached under ~/.cache/openvertex/llama-tools) `llama-server` and
`llama-batched-bench` from the llama-cpp-python sdist's vendor/llama.cpp, with llama.cpp's default
flags (llamafile's sgemm included, as a user of llama-server gets it) or, with --tools-flags
install, the flags install.sh gives openvertex's library; then, round by round on the same model
file and threads, each server in turn (the order rotated every round):

- streaming load at 1, 8 and 16 clients, 128 new tokens each: tok/s and median time to the first
  token, openvertex and llama-server alternately;
- the raw batched ceiling: llama-batched-bench's generation speed at those sequence counts, as
  built for llama-server, and built as install.sh builds openvertex's library (its flags and
  patches/*.patch): the ceiling of openvertex's own kernels;
- a cold 2,000-token prompt: time to the first token (a fresh prompt each round).

    .venv/bin/python -m benchmarks.llama_server [--levels 1 8 16] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median
from typing import Any

import httpx
import llama_cpp

from benchmarks.concurrency import _free_port, _wait_ready
from openvertex.backends.local.model import resolve_model_path

TOKENS = 128
PEER = "llama-server"
AUTH = {"Authorization": "Bearer bench"}  # any token does for openvertex on loopback; llama-server ignores it
PROMPT = "Write a long, detailed story about a magic backpack that travels the world."
THREADS = len(os.sched_getaffinity(0))
MODEL_PATH = str(resolve_model_path("smollm2"))
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "openvertex"
LONG_PROMPT_TOKENS = 2000
N_CTX = 1024  # per sequence, both servers
# install.sh's flags for the library: no llamafile sgemm, native ISA without AMX.
PATCHES = sorted(Path(__file__).resolve().parent.parent.joinpath("patches").glob("*.patch"))  # install.sh's
INSTALL_FLAGS = [
    "-DGGML_LLAMAFILE=OFF",
    "-DGGML_NATIVE=ON",
    "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16",
    "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16",
]


def vendored_source() -> Path:
    """The llama.cpp that llama-cpp-python (this version) vendors: its sdist, downloaded once."""
    version = llama_cpp.__version__
    root = CACHE / "llama-src"
    source = root / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if source.is_dir():
        return source
    root.mkdir(parents=True, exist_ok=True)
    archive = root / f"llama_cpp_python-{version}.tar.gz"
    if not archive.is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                "llama-cpp-python",
                f"llama-cpp-python=={version}",
                "-d",
                str(root),
            ],
            check=True,
        )
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return source


def build_tools(flags: list[str], *, patches: list[Path] | None = None) -> Path:
    """llama-server and llama-batched-bench built with `flags` (and `patches` applied to the
    source); the folder they are in."""
    applied = b"".join(patch.read_bytes() for patch in patches or [])
    key = hashlib.sha256(f"{llama_cpp.__version__}|{'|'.join(flags)}".encode() + applied).hexdigest()[:16]
    out = CACHE / "llama-tools" / key
    if (out / "llama-server").is_file() and (out / "llama-batched-bench").is_file():
        return out
    source = vendored_source()
    build = CACHE / "llama-tools" / f"build-{key}"
    if patches:
        patched = CACHE / "llama-tools" / f"source-{key}"
        shutil.rmtree(patched, ignore_errors=True)
        shutil.copytree(source, patched)
        for patch in patches:
            subprocess.run(
                ["patch", "--quiet", "--fuzz=0", "-p1", "-d", str(patched), "-i", str(patch.resolve())], check=True
            )
        source = patched
    configure = ["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF"]
    subprocess.run([*configure, "-DBUILD_SHARED_LIBS=OFF", *flags], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["cmake", "--build", str(build), "-j", str(THREADS), "--target", "llama-server", "llama-batched-bench"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    out.mkdir(parents=True, exist_ok=True)
    for tool in ("llama-server", "llama-batched-bench"):
        shutil.copy2(build / "bin" / tool, out / tool)
    shutil.rmtree(build)
    if patches:
        shutil.rmtree(source)
    return out


def start_openvertex(slots: int, flash_attention: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    local = {"type": "local", "n_parallel": slots, "n_ctx": max(N_CTX, LONG_PROMPT_TOKENS + 256), "n_threads": THREADS}
    env = os.environ | {"OPENVERTEX_BACKENDS": json.dumps({"local": local | {"flash_attention": flash_attention}})}
    command = [sys.executable, "-m", "openvertex", "serve", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _wait_ready(f"http://127.0.0.1:{port}/readyz", process)
    return process, f"http://127.0.0.1:{port}"


def start_llama_server(tools: Path, slots: int) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    per_slot = max(N_CTX, LONG_PROMPT_TOKENS + 256)
    command = [str(tools / "llama-server"), "-m", MODEL_PATH, "-t", str(THREADS), "-tb", str(THREADS)]
    command += ["-c", str(per_slot * slots), "-np", str(slots), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--no-webui", "-lv", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_ready(f"http://127.0.0.1:{port}/health", process)
    return process, f"http://127.0.0.1:{port}"


def one_stream(base: str, seed: int, prompt: str = PROMPT, tokens: int = TOKENS) -> tuple[float, int, float]:
    """(seconds to the first token, tokens, finish time) of one streamed chat completion."""
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "seed": seed,
        "temperature": 0.8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = 0.0
    count = 0
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=AUTH, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter() - started
                count += 1
            if chunk.get("usage"):
                count = chunk["usage"]["completion_tokens"]
    return first, count, time.perf_counter()


def load(base: str, clients: int, round_number: int) -> dict[str, float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(lambda i: one_stream(base, 1000 * round_number + i), range(clients)))
    elapsed = max(end for _, _, end in results) - started
    return {
        "tokens_per_s": sum(t for _, t, _ in results) / elapsed,
        "ttft_median_s": median(f for f, _, _ in results),
    }


def long_prompt_ttft(base: str, round_number: int) -> float:
    """Time to the first token of a fresh ~2,000-token prompt (its first words differ each time,
    so no server reuses a cached prefix): one token asked for, not streamed."""
    words = " ".join(f"item{(round_number * 7919 + i) % 100000:05d}" for i in range(330))  # 1,989 tokens
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": f"Round {round_number}. Summarise this list: {words}"}],
        "max_tokens": 1,
        "temperature": 0,
    }
    started = time.perf_counter()
    response = httpx.post(f"{base}/v1/chat/completions", json=body, headers=AUTH, timeout=600)
    if response.status_code != 200:
        raise RuntimeError(f"{base}: {response.status_code} {response.text}")
    return time.perf_counter() - started


def batched_ceiling(tools: Path, levels: list[int]) -> dict[int, float]:
    """llama-batched-bench's generation tok/s at each sequence count (32-token prompts)."""
    command = [str(tools / "llama-batched-bench"), "-m", MODEL_PATH, "-t", str(THREADS), "-tb", str(THREADS)]
    command += ["-c", str(N_CTX * max(levels)), "-npp", "32", "-ntg", str(TOKENS), "-npl", ",".join(map(str, levels))]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rates: dict[int, float] = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and re.fullmatch(r"\d+", cells[2] or ""):
            rates[int(cells[2])] = float(cells[7])  # PP, TG, B, N_KV, T_PP, S_PP, T_TG, S_TG, ...
    return rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tools-flags", choices=["install", "default"], default="default")
    parser.add_argument(
        "--flash-attention", nargs="+", default=["on", "fast", "off"], help="openvertex's, one server each"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/llama_server.json"))
    args = parser.parse_args()
    tools = build_tools(INSTALL_FLAGS if args.tools_flags == "install" else [])
    own_tools = build_tools(INSTALL_FLAGS, patches=PATCHES)
    slots = max(args.levels)
    started: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    per_round: list[dict[str, Any]] = []
    try:
        for mode in args.flash_attention:
            started[f"openvertex fa={mode}"] = start_openvertex(slots, mode)
        started[PEER] = start_llama_server(tools, slots)  # each idle (no CPU) while another is driven
        servers = {name: base for name, (_, base) in started.items()}
        for base in servers.values():
            load(base, 1, 0)  # warm-up
        for number in range(1, args.rounds + 1):
            measured: dict[str, Any] = {
                "raw_tokens_per_s": batched_ceiling(tools, args.levels),
                "raw_own_tokens_per_s": batched_ceiling(own_tools, args.levels),
                "levels": {},
                "long_prompt_ttft_s": {},
            }
            order = list(servers)[number % len(servers) :] + list(servers)[: number % len(servers)]  # rotated
            for clients in args.levels:
                measured["levels"][clients] = {name: load(servers[name], clients, number) for name in order}
            for name, base in servers.items():
                measured["long_prompt_ttft_s"][name] = long_prompt_ttft(base, number)
            per_round.append(measured)
    finally:
        stop_all([process for process, _ in started.values()])
    result = summary(per_round, list(servers), args.levels)
    result |= {"threads": THREADS, "tokens_per_client": TOKENS, "tools_flags": args.tools_flags, "cpu": cpu_facts()}
    result["rounds"] = per_round
    print(f"medians of {args.rounds} interleaved rounds, {THREADS} threads, {result['cpu']['model']}")
    print(
        f"{'clients':>7} {'server':>18} {'tok/s':>7} {'vs llama-server':>15} {'vs raw':>7}"
        f" {'vs own raw':>10} {'TTFT s':>7}"
    )
    for clients, level in result["levels"].items():
        for name, figures in level.items():
            print(
                f"{clients:>7} {name:>18} {figures['tokens_per_s']:>7.1f} {figures['vs_llama_server']:>15.2f}"
                f" {figures['vs_raw']:>7.2f} {figures['vs_own_raw']:>10.2f} {figures['ttft_median_s']:>7.3f}"
            )
    for name, figures in result["long_prompt_ttft_s"].items():
        print(
            f"{LONG_PROMPT_TOKENS}-token prompt, {name}: first token after {figures['seconds']:.2f} s"
            f" ({figures['vs_llama_server']:.2f}x llama-server's)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def summary(per_round: list[dict[str, Any]], names: list[str], levels: list[int]) -> dict[str, Any]:
    """Medians over the rounds; ratios are medians of each round's ratio (drift lands on both)."""
    result: dict[str, Any] = {"levels": {}, "long_prompt_ttft_s": {}}
    for clients in levels:
        level: dict[str, Any] = {}
        for name in names:
            mine = [r["levels"][clients][name] for r in per_round]
            peers = [r["levels"][clients][PEER] for r in per_round]
            raws = [r["raw_tokens_per_s"].get(clients, float("nan")) for r in per_round]
            own_raws = [r["raw_own_tokens_per_s"].get(clients, float("nan")) for r in per_round]
            level[name] = {
                "tokens_per_s": median(m["tokens_per_s"] for m in mine),
                "ttft_median_s": median(m["ttft_median_s"] for m in mine),
                "vs_llama_server": median(
                    m["tokens_per_s"] / p["tokens_per_s"] for m, p in zip(mine, peers, strict=True)
                ),
                "vs_raw": median(m["tokens_per_s"] / raw for m, raw in zip(mine, raws, strict=True)),
                "vs_own_raw": median(m["tokens_per_s"] / raw for m, raw in zip(mine, own_raws, strict=True)),
            }
        result["levels"][str(clients)] = level
    for name in names:
        seconds = [r["long_prompt_ttft_s"][name] for r in per_round]
        peers = [r["long_prompt_ttft_s"][PEER] for r in per_round]
        result["long_prompt_ttft_s"][name] = {
            "seconds": median(seconds),
            "vs_llama_server": median(m / p for m, p in zip(seconds, peers, strict=True)),
        }
    return result


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """Ask every server to stop, then wait for each (killed past 30 s)."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def cpu_facts() -> dict[str, Any]:
    """The CPU's model name and the instruction-set flags llama.cpp's speed depends on."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", info)
    flags = re.search(r"flags\s*:\s*(.*)", info)
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512bw", "avx_vnni", "f16c", "fma", "amx_tile")
    return {
        "model": model.group(1) if model else "unknown",
        "flags": [f for f in (flags.group(1).split() if flags else []) if f in wanted],
    }


if __name__ == "__main__":
    main()
