"""Gateway overhead on a zero-cost upstream: openvertex against the LiteLLM proxy, same upstream and load, one run.

Starts the shared harness's zero-cost upstream (`../shared/bench/gateway/zero_upstream.py`: canned
OpenAI and Gemini answers, no work), then openvertex in front of it, then the LiteLLM proxy in
front of it, one after the other, and drives each with the harness's `bench.py` (aiohttp
closed-loop clients; direct-to-upstream and through-the-gateway runs interleaved, medians over
rounds; the gateway's CPU from /proc). Cases, all OpenAI Chat Completions requests:

  (i)  translation, OpenAI in → Gemini out: `…/endpoints/openapi/chat/completions`, model
       `zero-gemini` routed to a `type = "gemini"` backend whose base_url is the upstream
       (bench.py cases c, d: non-streaming, streaming); no local model is loaded.
  (ii) self-deployed pass-through: `…/endpoints/zero/chat/completions`, `[endpoints."zero"]`
       relaying to the upstream's `/v1` (cases a, b). Skipped, and said so, when openvertex
       does not answer that path.

LiteLLM gets the same cases at `/v1/chat/completions` (the harness's litellm_config.yaml). It runs
from its own virtual environment (its pins clash with this project's); without one the LiteLLM
half is skipped with a notice, and the JSON says so:

    python3 -m venv /tmp/gw/venv && /tmp/gw/venv/bin/pip install -r ../shared/bench/gateway/requirements.txt

Targets (issue 11): openvertex ≥ 10 times LiteLLM's requests/s at 32 clients, and ≤ 1 ms added median
latency at one client. Prints a table (req/s, added p50, gateway CPU ms per request) and the
ratios; writes the JSON. Loopback only; every process started here is stopped, also on errors.
About 6 minutes on two cores with the defaults, 5 of them LiteLLM's (it serves 40 to 70 requests/s).

    .venv/bin/python benchmarks/gateway.py [--levels 1:300,32:1500] [--rounds 2]
        [--paths translation,passthrough] [--litellm-venv /tmp/gw/venv | --no-litellm] [--out FILE]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO.parent / "shared" / "bench" / "gateway"
PREFIX = "/v1/projects/p/locations/l/endpoints"
TRANSLATION_PATH = f"{PREFIX}/openapi/chat/completions"
PASSTHROUGH_PATH = f"{PREFIX}/zero/chat/completions"
LITELLM_PATH = "/v1/chat/completions"
# The harness's cases (bench.py): which path of openvertex serves each.
PATH_CASES = {"translation": "c,d", "passthrough": "a,b"}
CASE_PATH = {"a": "passthrough", "b": "passthrough", "c": "translation", "d": "translation"}
TARGET_RPS_RATIO = 10.0
TARGET_ADDED_P50_MS = 1.0
# Never let a client in here go through an HTTP proxy.
ENV = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
ENV |= {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(url: str, body: dict[str, Any], token: str) -> tuple[int, bytes]:
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@dataclass
class Processes:
    """Everything started here, stopped in reverse order whatever happens."""

    running: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(
        self, name: str, command: list[str], log: Path, pipe: bool = False, **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        """Output to `log`; with `pipe`, stdout stays readable here and only stderr goes to the log."""
        kwargs.setdefault("env", ENV)
        with log.open("wb") as out:
            stdout = subprocess.PIPE if pipe else out
            process = subprocess.Popen(command, stdout=stdout, stderr=out, **kwargs)
        self.running.append((name, process))
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        name = next((n for n, p in self.running if p is process), "?")
        self.running = [(n, p) for n, p in self.running if p is not process]
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        print(f"stopped {name} (pid {process.pid})", flush=True)

    def stop_named(self, name: str) -> None:
        for n, process in list(self.running):
            if n == name:
                self.stop(process)

    def stop_all(self) -> None:
        for _, process in reversed(list(self.running)):
            self.stop(process)


def wait_until(ready_url: str, process: subprocess.Popen[bytes], log: Path, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if get_ok(ready_url):
            return time.monotonic() - started
        if process.poll() is not None:
            break
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{ready_url} not ready (exit code {process.poll()}); log tail:\n{tail}")


def openvertex_config(work: Path, upstream: str, passthrough: bool) -> Path:
    lines = [
        f'state_dir = "{work / "state"}"',
        "",
        "[backends.gemini]",
        'type = "gemini"',
        'api = "gemini"',
        'api_key = "zero"',
        f'base_url = "{upstream}"',
        "",
        "[[routes]]",
        'model = "zero-gemini"',
        'backend = "gemini"',
    ]
    if passthrough:
        lines += ["", '[endpoints."zero"]', f'upstreams = ["{upstream}/v1"]']
    path = work / "openvertex.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_openvertex(procs: Processes, work: Path, upstream: str, passthrough: bool) -> tuple[int, str, Path]:
    config = openvertex_config(work, upstream, passthrough)
    log = work / "openvertex.log"
    command = [sys.executable, "-m", "openvertex", "serve", "--port", "0", "--config", str(config)]
    command += ["--log-level", "warning"]
    process = procs.start("openvertex", command, log, pipe=True)
    assert process.stdout is not None
    first = process.stdout.readline().decode().split()
    if not first:
        raise RuntimeError(f"openvertex exited ({process.wait()}): {log.read_text(errors='replace')[-3000:]}")
    base = first[-1]
    # Keep reading what else it prints, so that a full pipe can never block it.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    seconds = wait_until(f"{base}/readyz", process, log, 60)
    print(
        f"openvertex {importlib.metadata.version('openvertex')} pid {process.pid} at {base} (ready in {seconds:.1f} s)"
    )
    return process.pid, base, log


def litellm_version(venv: Path) -> str | None:
    python, cli = venv / "bin" / "python", venv / "bin" / "litellm"
    if not python.exists() or not cli.exists():
        return None
    check = "import importlib.metadata as m; print(m.version('litellm'))"
    done = subprocess.run([str(python), "-c", check], capture_output=True, text=True, env=ENV, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def start_litellm(procs: Processes, work: Path, harness: Path, venv: Path, upstream: str) -> tuple[int, str, str, Path]:
    folder = work / "litellm"
    folder.mkdir()
    config = (harness / "litellm_config.yaml").read_text().replace("${ZERO_UPSTREAM}", upstream)
    (folder / "config.yaml").write_text(config)
    port = free_port()
    master_key = "sk-" + secrets.token_hex(32)  # LiteLLM needs one to boot; kept in memory only
    env = {k: v for k, v in ENV.items() if k not in ("DATABASE_URL", "REDIS_HOST", "REDIS_URL")}
    env |= {
        "LITELLM_MASTER_KEY": master_key,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # else its import fetches a cost map from the network
        "LITELLM_LOCAL_BLOG_POSTS": "True",
        "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
        "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
        "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "DISABLE_ADMIN_UI": "True",
    }
    command = [str(venv / "bin" / "litellm"), "--config", "config.yaml", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--num_workers", "1"]
    log = work / "litellm.log"
    process = procs.start("litellm", command, log, cwd=folder, env=env)
    base = f"http://127.0.0.1:{port}"
    seconds = wait_until(f"{base}/health/liveliness", process, log, 180)
    print(f"litellm pid {process.pid} at {base} (ready in {seconds:.1f} s)", flush=True)
    return process.pid, base, master_key, log


def probe(url: str, model: str, token: str) -> str | None:
    """None when both a plain and a streaming request answer as the benchmark expects; else why not."""
    for stream in (False, True):
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        status, data = post(url, body, token)
        expect = b"[DONE]" if stream else b"Hello"
        if status != 200 or expect not in data:
            return f"stream={stream}: HTTP {status} {data[:300]!r}"
    return None


@dataclass
class BenchRun:
    """One bench.py invocation: a gateway, a chat path and the cases it serves."""

    gateway: str
    version: str
    base: str
    pid: int
    chat_path: str
    cases: str
    token: str


@dataclass
class Session:
    """What every part of one benchmark run shares: the options, the processes, the upstream."""

    args: argparse.Namespace
    procs: Processes
    work: Path
    upstream: str = ""
    upstream_pid: int = 0
    deadline: float = 0.0

    def bench(self, run: BenchRun) -> Any:
        a = self.args
        out = self.work / f"bench-{run.gateway}-{run.cases.replace(',', '')}.json"
        command = [sys.executable, str(a.harness / "bench.py"), "--upstream", self.upstream]
        command += ["--upstream-pid", str(self.upstream_pid), "--gateway", run.base, "--gateway-pid", str(run.pid)]
        command += ["--chat-path", run.chat_path, "--gateway-name", run.gateway, "--gateway-version", run.version]
        command += ["--cases", run.cases, "--openai-model", "zero-openai", "--gemini-model", "zero-gemini"]
        command += ["--levels", a.levels, "--rounds", str(a.rounds), "--warmup-n", str(a.warmup_n)]
        command += ["--max-seconds", str(a.max_seconds), "--budget-s", str(max(self.deadline - time.monotonic(), 1.0))]
        command += ["--out", str(out)]
        print(f"\n== {run.gateway} {run.chat_path} cases {run.cases}", flush=True)
        # The token goes in the environment (bench.py reads GATEWAY_KEY), not on a command line.
        done = subprocess.run(command, env=ENV | {"GATEWAY_KEY": run.token}, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"bench.py failed for {run.gateway} cases {run.cases} (exit code {done.returncode})")
        result = json.loads(out.read_text())
        if result["meta"]["stopped_early"]:
            print(f"!! {run.gateway} cases {run.cases}: --budget-s reached, some rounds were not run", flush=True)
        return result


def log_problems(log: Path) -> list[str]:
    """A gateway's own log lines that say something went wrong (both run at warning or error level)."""
    words = ("ERROR", "Traceback", "Exception", "WARNING", "Error")
    return [line for line in log.read_text(errors="replace").splitlines() if any(w in line for w in words)][:20]


def measure_openvertex(session: Session) -> dict[str, Any]:
    paths = [p for p in session.args.paths.split(",") if p]
    pid, base, log = start_openvertex(session.procs, session.work, session.upstream, "passthrough" in paths)
    result: dict[str, Any] = {"version": importlib.metadata.version("openvertex"), "url": base}
    try:
        for path in paths:
            chat_path = TRANSLATION_PATH if path == "translation" else PASSTHROUGH_PATH
            model = "zero-gemini" if path == "translation" else "zero-openai"
            why = probe(base + chat_path, model, "anything")
            if why is not None:
                print(f"\n!! openvertex {path} ({chat_path}) does not answer as expected, not measured: {why}")
                result[path] = {"skipped": f"{chat_path} did not answer: {why}"}
                continue
            run = BenchRun("openvertex", result["version"], base, pid, chat_path, PATH_CASES[path], "anything")
            result[path] = session.bench(run)
    finally:
        session.procs.stop_named("openvertex")
        result["log_problems"] = log_problems(log)
    return result


def measure_litellm(session: Session, cases: str) -> dict[str, Any]:
    a = session.args
    version = None if a.no_litellm else litellm_version(a.litellm_venv)
    if version is None:
        why = "--no-litellm given" if a.no_litellm else f"no litellm installed in {a.litellm_venv}"
        print(
            f"\n!! LiteLLM part skipped: {why}. To include it:\n   python3 -m venv {a.litellm_venv} && "
            f"{a.litellm_venv}/bin/pip install -r {a.harness / 'requirements.txt'}",
            flush=True,
        )
        return {"skipped": why}
    pid, base, key, log = start_litellm(session.procs, session.work, a.harness, a.litellm_venv, session.upstream)
    result: dict[str, Any] = {"version": version, "url": base}
    try:
        for model in ("zero-openai", "zero-gemini"):
            why = probe(base + LITELLM_PATH, model, key)
            if why is not None:
                raise RuntimeError(f"litellm does not answer {model}: {why}")
        result["all"] = session.bench(BenchRun("litellm", version, base, pid, LITELLM_PATH, cases, key))
    finally:
        session.procs.stop_named("litellm")
        result["log_problems"] = log_problems(log)
    return result


def cells(bench: Any) -> dict[tuple[str, int], dict[str, Any]]:
    """(case, clients) → the bench.py summary cell."""
    if not isinstance(bench, dict) or "summary" not in bench:
        return {}
    return {(case, int(level[1:])): cell for case, per in bench["summary"].items() for level, cell in per.items()}


def table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per gateway, case and number of clients."""
    sources = [("openvertex", result["openvertex"].get(p)) for p in PATH_CASES] + [
        ("litellm", result["litellm"].get("all"))
    ]
    rows = []
    for gateway, bench in sources:
        for (case, clients), cell in sorted(cells(bench).items()):
            gw = cell["gateway"]
            rows.append(
                {
                    "gateway": gateway,
                    "case": f"{case} {cell['case_name']}",
                    "path": CASE_PATH[case],
                    "clients": clients,
                    "direct_rps": cell["direct"]["rps"],
                    "rps": gw["rps"],
                    "added_p50_ms": cell.get("added_p50_ms"),
                    "p99_ms": gw["p99_ms"],
                    "cpu_ms_per_request": gw.get("gateway_cpu_ms_per_req"),
                    "errors": gw["errors"],
                }
            )
    # Case by case, clients by clients: each openvertex figure above LiteLLM's.
    return sorted(rows, key=lambda r: (r["case"], r["clients"], r["gateway"] != "openvertex"))


def comparison(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per openvertex case: its req/s over LiteLLM's at 32 clients (else the most), its added p50 at the fewest."""
    by = {(r["gateway"], r["case"], r["clients"]): r for r in rows}
    levels = sorted({r["clients"] for r in rows})
    if not levels:
        return []
    many, one = (32 if 32 in levels else levels[-1]), levels[0]
    out = []
    for case, path in sorted({(r["case"], r["path"]) for r in rows if r["gateway"] == "openvertex"}):
        ours_many, theirs_many = by.get(("openvertex", case, many)), by.get(("litellm", case, many))
        ours_one, theirs_one = by.get(("openvertex", case, one)), by.get(("litellm", case, one))
        ratio = None
        if ours_many and theirs_many and ours_many["rps"] and theirs_many["rps"]:
            ratio = round(ours_many["rps"] / theirs_many["rps"], 1)
        added = ours_one["added_p50_ms"] if ours_one else None
        out.append(
            {
                "case": case,
                "path": path,
                "clients_for_ratio": many,
                "rps_ratio": ratio,
                "meets_rps_target": None if ratio is None else ratio >= TARGET_RPS_RATIO,
                "clients_for_latency": one,
                "openvertex_added_p50_ms": added,
                "litellm_added_p50_ms": theirs_one["added_p50_ms"] if theirs_one else None,
                "meets_latency_target": None if added is None else added <= TARGET_ADDED_P50_MS,
            }
        )
    return out


def show(rows: list[dict[str, Any]], compared: list[dict[str, Any]], skipped: dict[str, str]) -> None:
    header = ["gateway", "case", "path", "clients", "direct req/s", "req/s", "added p50 ms", "CPU ms/req", "errors"]
    keys = ["gateway", "case", "path", "clients", "direct_rps", "rps", "added_p50_ms", "cpu_ms_per_request", "errors"]
    widths = [11, 21, 12, 8, 13, 10, 13, 11, 7]
    print()
    print("".join(f"{h:<{w}}" if i < 3 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(header, widths, strict=True))))
    for r in rows:
        cols = [str(r[k]) for k in keys]
        print("".join(f"{c:<{w}}" if i < 3 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cols, widths, strict=True))))
    verdict = {True: "met", False: "NOT met", None: "not measured"}
    print()
    for gateway, part in skipped.items():
        print(f"{gateway}: skipped: {part}")
    for c in compared:
        ratio = "n/a" if c["rps_ratio"] is None else f"{c['rps_ratio']}×"
        theirs = "n/a" if c["litellm_added_p50_ms"] is None else c["litellm_added_p50_ms"]
        print(
            f"{c['case']} ({c['path']}): openvertex/LiteLLM req/s at {c['clients_for_ratio']} clients {ratio} "
            f"(≥ {TARGET_RPS_RATIO:g}×: {verdict[c['meets_rps_target']]}); added p50 at {c['clients_for_latency']} "
            f"client {c['openvertex_added_p50_ms']} ms (≤ {TARGET_ADDED_P50_MS:g} ms: "
            f"{verdict[c['meets_latency_target']]}; LiteLLM {theirs} ms)"
        )


def run(session: Session) -> dict[str, Any]:
    args = session.args
    session.deadline = time.monotonic() + args.budget_s
    port = free_port()
    session.upstream = f"http://127.0.0.1:{port}"
    log = session.work / "upstream.log"
    up = session.procs.start(
        "zero upstream", [sys.executable, str(args.harness / "zero_upstream.py"), "--port", str(port)], log
    )
    wait_until(f"{session.upstream}/health", up, log, 20)
    session.upstream_pid = up.pid
    print(f"zero upstream pid {up.pid} at {session.upstream}", flush=True)
    result: dict[str, Any] = {
        "openvertex": {"skipped": "--paths is empty"},
        "litellm": {"skipped": "nothing to compare"},
    }
    if args.paths:
        result["openvertex"] = measure_openvertex(session)
    measured = [p for p, bench in result["openvertex"].items() if p in PATH_CASES and "summary" in bench]
    # LiteLLM runs the cases openvertex was measured on (all four when openvertex was not run).
    cases = sorted(",".join(PATH_CASES[p] for p in measured).split(",")) if args.paths else ["a", "b", "c", "d"]
    if any(cases):
        result["litellm"] = measure_litellm(session, ",".join(cases))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1:300,32:1500", help="clients:requests per run, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved direct/gateway rounds; medians over them")
    parser.add_argument("--warmup-n", type=int, default=100, help="unrecorded requests per case and side first")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="cap on one load run")
    parser.add_argument("--budget-s", type=float, default=600.0, help="no load run starts after this many seconds")
    parser.add_argument("--paths", default="translation,passthrough", help="openvertex paths to measure")
    parser.add_argument("--litellm-venv", type=Path, default=Path("/tmp/gw/venv"), help="venv with litellm[proxy]")
    parser.add_argument("--no-litellm", action="store_true", help="measure openvertex only")
    parser.add_argument("--harness", type=Path, default=HARNESS, help="the shared bench/gateway folder")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gateway.json")
    args = parser.parse_args()
    if unknown := set(args.paths.split(",")) - set(PATH_CASES) - {""}:
        parser.error(f"unknown --paths {sorted(unknown)}; choose from {sorted(PATH_CASES)}")
    args.harness = args.harness.resolve()
    # A TERM (or hang-up) unwinds like Ctrl-C, so the finally below stops every process.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit("stopped by signal"))
    started = time.monotonic()
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="openvertex-gateway-bench-") as tmp:
        try:
            result = run(Session(args, procs, Path(tmp)))
        finally:
            procs.stop_all()
    rows = table(result)
    compared = comparison(rows)
    parts = {"openvertex": result["openvertex"], "openvertex pass-through": result["openvertex"].get("passthrough", {})}
    parts |= {"openvertex translation": result["openvertex"].get("translation", {}), "LiteLLM": result["litellm"]}
    show(rows, compared, {name: part["skipped"] for name, part in parts.items() if "skipped" in part})
    report = {
        "benchmark": "gateway overhead on a zero-cost upstream: openvertex vs the LiteLLM proxy, same load, one run",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "targets": {"rps_ratio_at_32_clients": TARGET_RPS_RATIO, "added_p50_ms_at_1_client": TARGET_ADDED_P50_MS},
        "total_s": round(time.monotonic() - started, 1),
        "table": rows,
        "comparison": compared,
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {args.out} ({report['total_s']} s)")


if __name__ == "__main__":
    main()
