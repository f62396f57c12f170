"""Embeddings (issue 25): openvertex's embedded all-MiniLM-L6-v2 against sentence-transformers on the
same model folder, in one run: embeddings/s at 1 and 32 clients (target ≥ 1.0x) and ranking
agreement on a similarity set (target Spearman ≥ 0.99).

Texts are made here, deterministically (--seed): a pool of sentences of 8 to 60 words from
templates over eight topics' vocabularies, and a similarity set of sentence pairs (the same facts
reworded, the same topic, different topics).

- openvertex: `openvertex serve --port 0` with default settings in a temporary state_dir, driven
  through HTTP with the openai SDK (AsyncOpenAI, its default base64 vectors) at POST /v1/embeddings,
  model text-embedding-005, one text a request: 1 client sending one request after another, and 32
  asyncio clients. The server's own CPU time and this process's (the clients') are read from /proc.
- reference: sentence-transformers on `packaged_folder("all-minilm-l6-v2")`, in this process,
  torch.set_num_threads(os.cpu_count()) (the server's engine also uses every core): "1 client" is
  encode() of one text at a time; "32 clients" is encode() of batches of 32 texts, the reference's
  best case for throughput (one forward pass over 32 texts, no queueing, no HTTP).
- engine (diagnostic): openvertex's EmbeddingEngine on the same GGUF in this process, no HTTP: one
  text per embed() call, 1 at a time and 32 concurrent, so the HTTP share of a gap can be read.

Never two at once: the server sits idle while the reference or the engine runs and the other way
round; rounds are interleaved (the order rotated each round) and figures are medians over rounds,
ratios medians of each round's ratio. Every measurement also records the cores that other
processes kept busy meanwhile (/proc/stat less this process and the server); one disturbed by more
than 0.1 core is taken again, up to three tries, and what stays disturbed is named in a warning:
on a shared machine llama.cpp's threads, which spin at their barriers, suffer far more than torch's.

Quality: every pool and pair text embedded by both (openvertex with float vectors, in requests of
64 texts): the Spearman correlation of the pairs' cosines, the largest elementwise difference and
the smallest cosine between the two implementations' vectors of one text.

    .venv/bin/python -m benchmarks.embeddings [--requests 1:160,32:640] [--rounds 3] [--seed 25]
        [--no-engine] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

import httpx
import numpy as np
import openai

from benchmarks.llama_server import cpu_facts

REPO = Path(__file__).resolve().parents[1]
MODEL = "text-embedding-005"
THREADS = os.cpu_count() or 2
TARGET_RATIO = 1.0
TARGET_SPEARMAN = 0.99
INTERFERENCE_CORES = 0.1  # other processes' CPU during a measurement, beyond which it is taken again
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- texts

# topic → slots; a slot is a list of words or phrases, each with its synonyms after "|" (a paraphrase
# picks another); a verb is "past/participle".
TOPICS: dict[str, dict[str, list[str]]] = {
    "medicine": {
        "subject": ["doctor|physician", "nurse|ward nurse", "surgeon|consultant surgeon", "pharmacist|chemist"],
        "verb": [
            "examined/examined|checked/checked",
            "treated/treated|cared for/cared for",
            "prescribed/prescribed|ordered/ordered",
            "discussed/discussed|talked over/talked over",
        ],
        "object": [
            "the elderly patient|the old patient",
            "the new medication|the new drug",
            "a routine blood test|a standard blood test",
            "the infected wound|the inflamed wound",
            "the test results|the lab results",
        ],
        "place": [
            "at the clinic|in the clinic",
            "in the emergency room|in the casualty ward",
            "at the county hospital|in the regional hospital",
        ],
    },
    "cooking": {
        "subject": [
            "chef|head cook",
            "baker|pastry cook",
            "my grandmother|my gran",
            "the kitchen assistant|the kitchen hand",
        ],
        "verb": [
            "prepared/prepared|made/made",
            "seasoned/seasoned|spiced/spiced",
            "baked/baked|roasted/roasted",
            "tasted/tasted|sampled/sampled",
        ],
        "object": [
            "a spicy tomato soup|a hot tomato soup",
            "the sourdough bread|the sourdough loaf",
            "a lemon cake with fresh cream|a lemon sponge with whipped cream",
            "the roast chicken|the roasted chicken",
            "fresh pasta|homemade pasta",
        ],
        "place": [
            "in the restaurant kitchen|in the kitchen of the restaurant",
            "at the village bakery|in the little bakery",
            "at home|in her own kitchen",
        ],
    },
    "football": {
        "subject": [
            "striker|centre forward",
            "goalkeeper|keeper",
            "coach|manager",
            "young midfielder|teenage midfielder",
        ],
        "verb": [
            "kicked/kicked|struck/struck",
            "defended/defended|protected/protected",
            "trained/trained|drilled/drilled",
            "celebrated/celebrated|cheered/cheered",
        ],
        "object": [
            "the penalty|the spot kick",
            "the late winning goal|the last-minute winner",
            "the youth team|the junior squad",
            "the ball into the top corner|the ball into the upper corner",
            "the narrow lead|the slim lead",
        ],
        "place": [
            "at the stadium|in the stadium",
            "on the training ground|at the training pitch",
            "in front of the home crowd|before the home fans",
        ],
    },
    "finance": {
        "subject": ["analyst|market analyst", "bank|lender", "investor|shareholder", "central bank|monetary authority"],
        "verb": [
            "raised/raised|increased/increased",
            "reviewed/reviewed|examined/examined",
            "sold/sold|offloaded/offloaded",
            "forecast/forecast|predicted/predicted",
        ],
        "object": [
            "interest rates|the interest rate",
            "the quarterly earnings report|the quarterly results",
            "its government bonds|its treasury bonds",
            "the stock price|the share price",
            "a sharp rise in inflation|a steep increase in inflation",
        ],
        "place": [
            "in the financial district|in the city",
            "at the annual meeting|during the yearly meeting",
            "on the stock exchange|in the stock market",
        ],
    },
    "software": {
        "subject": [
            "developer|programmer",
            "engineering team|software team",
            "release manager|release engineer",
            "security researcher|security analyst",
        ],
        "verb": [
            "fixed/fixed|repaired/repaired",
            "deployed/deployed|rolled out/rolled out",
            "reviewed/reviewed|inspected/inspected",
            "rewrote/rewritten|refactored/refactored",
        ],
        "object": [
            "the memory leak|the leaking memory",
            "the new database migration|the new schema migration",
            "a critical login bug|a serious sign-in bug",
            "the slow search query|the sluggish search query",
            "the payment service|the billing service",
        ],
        "place": [
            "in the staging environment|on the staging servers",
            "on the production cluster|in production",
            "during the code review|in the review meeting",
        ],
    },
    "weather": {
        "subject": ["storm|gale", "heavy rain|downpour", "the cold front|the wave of cold air", "thick fog|dense fog"],
        "verb": [
            "flooded/flooded|inundated/inundated",
            "damaged/damaged|harmed/harmed",
            "delayed/delayed|held up/held up",
            "covered/covered|blanketed/blanketed",
        ],
        "object": [
            "the coastal roads|the roads along the coast",
            "the morning flights|the early flights",
            "the low fields|the lowland fields",
            "the old harbour wall|the ancient harbour wall",
            "the mountain pass|the pass through the mountains",
        ],
        "place": ["in the north|across the north", "along the coast|by the sea", "in the valley|down in the valley"],
    },
    "gardening": {
        "subject": [
            "gardener|groundskeeper",
            "my neighbour|the woman next door",
            "the volunteers|the helpers",
            "the florist|the flower seller",
        ],
        "verb": [
            "planted/planted|sowed/sown",
            "pruned/pruned|trimmed/trimmed",
            "watered/watered|sprinkled/sprinkled",
            "harvested/harvested|picked/picked",
        ],
        "object": [
            "the rose bushes|the roses",
            "a row of tomatoes|a line of tomato plants",
            "the apple trees|the apple orchard",
            "the herb garden|the herb beds",
            "tulip bulbs|bulbs of tulips",
        ],
        "place": [
            "in the back garden|in the garden behind the house",
            "at the allotment|on the allotment",
            "in the greenhouse|inside the glasshouse",
        ],
    },
    "travel": {
        "subject": [
            "tourist|traveller",
            "tour guide|guide",
            "the family|the whole family",
            "the backpackers|the young hikers",
        ],
        "verb": [
            "booked/booked|reserved/reserved",
            "visited/visited|toured/toured",
            "photographed/photographed|took pictures of/taken pictures of",
            "missed/missed|lost/lost",
        ],
        "object": [
            "the night train|the overnight train",
            "the old castle|the medieval castle",
            "a cheap hotel room|an inexpensive hotel room",
            "the ferry to the island|the boat to the island",
            "the famous cathedral|the well-known cathedral",
        ],
        "place": [
            "in Lisbon|in the Portuguese capital",
            "near the border|close to the border",
            "in the mountains|up in the mountains",
        ],
    },
}
TIMES = [
    "yesterday|the day before",
    "last week|a week ago",
    "this morning|earlier today",
    "on Friday|last Friday",
    "in the spring|during spring",
    "after lunch|in the early afternoon",
]
CONNECTORS = [", and ", "; meanwhile, ", ", although ", ", because ", ", while ", ". Later, ", ". After that, "]
FACT_COUNTS = (1, 1, 2, 2, 3, 4, 5, 6)  # per pool text: more short texts than long ones
PAIR_KINDS = ("paraphrase", "related", "unrelated")
Fact = tuple[str, int, int, int, int, int]  # topic, subject, verb, object, place, time


def random_fact(rng: random.Random, topic: str, subject: int | None = None) -> Fact:
    slots = TOPICS[topic]
    return (
        topic,
        rng.randrange(len(slots["subject"])) if subject is None else subject,
        rng.randrange(len(slots["verb"])),
        rng.randrange(len(slots["object"])),
        rng.randrange(len(slots["place"])),
        rng.randrange(len(TIMES)),
    )


def upper(text: str) -> str:
    return text[0].upper() + text[1:]  # not str.capitalize(): "in Lisbon" keeps its capital


def plural(thing: str) -> bool:
    """Whether the phrase's head noun is plural ("the roads along the coast", not "a row of tomatoes")."""
    head = re.split(r" (?:of|in|into|along|through|to|with) ", thing)[0]
    return head.endswith("s") and not head.endswith("ss") and not head.startswith(("a ", "an "))


def clause(fact: Fact, rng: random.Random) -> str:
    """One fact in one of four phrasings, each slot as one of its synonyms."""
    topic, *at = fact
    slots = TOPICS[topic]
    subject, verb, thing, place = (rng.choice(slots[k][i].split("|")) for k, i in zip(slots, at, strict=False))
    when = rng.choice(TIMES[at[4]].split("|"))
    past, participle = verb.split("/")
    be = "were" if plural(thing) else "was"
    subject = subject if subject.startswith(("the ", "my ")) else f"the {subject}"
    return rng.choice(
        [
            f"{upper(when)}, {subject} {past} {thing} {place}",
            f"{upper(subject)} {past} {thing} {place} {when}",
            f"{upper(subject)} {past} {thing} {when}",
            f"{upper(place)}, {thing} {be} {participle} by {subject} {when}",
        ]
    )


def sentence(facts: list[Fact], rng: random.Random) -> str:
    """The facts as one text of at most 60 words (facts past that are left out)."""
    text = clause(facts[0], rng)
    for fact in facts[1:]:
        connector = rng.choice(CONNECTORS)
        part = clause(fact, rng)
        part = part[0].lower() + part[1:]
        if len(f"{text}{connector}{part}".split()) > 60:
            break
        text += connector + part
    return text + "."


def make_pool(seed: int, size: int = 320) -> list[str]:
    """Texts of 8 to 60 words: 1 to 6 facts, mostly from one topic."""
    rng = random.Random(seed)
    texts = []
    for _ in range(size):
        topic = rng.choice(list(TOPICS))
        facts = [
            random_fact(rng, topic if rng.random() < 0.8 else rng.choice(list(TOPICS)))
            for _ in range(rng.choice(FACT_COUNTS))
        ]
        text = sentence(facts, rng)
        while len(text.split()) < 8:  # the shortest phrasing of one fact can be 7 words
            text = sentence(facts, rng)
        texts.append(text)
    return texts


def make_pairs(seed: int, count: int = 200) -> list[tuple[str, str, str]]:
    """(kind, a, b): the same facts reworded, the same topic and subject with other facts, or two topics."""
    rng = random.Random(seed + 1)
    pairs = []
    for index in range(count):
        kind = PAIR_KINDS[index % 3]
        topic = rng.choice(list(TOPICS))
        facts = [random_fact(rng, topic) for _ in range(rng.randint(1, 3))]
        first = sentence(facts, rng)
        if kind == "paraphrase":
            second = first
            while second == first:
                second = sentence(facts, rng)
        elif kind == "related":
            second = sentence([random_fact(rng, topic, facts[0][1]) for _ in range(rng.randint(1, 3))], rng)
        else:
            other = rng.choice([name for name in TOPICS if name != topic])
            second = sentence([random_fact(rng, other) for _ in range(rng.randint(1, 3))], rng)
        pairs.append((kind, first, second))
    return pairs


# ---------------------------------------------------------------------- openvertex through HTTP


@contextmanager
def server(state_dir: Path) -> Iterator[tuple[str, int]]:
    """The real server with default settings (the local and the embedding backend) on a free port."""
    config = state_dir / "openvertex.toml"
    config.write_text(f'state_dir = "{state_dir}"\n')
    command = [sys.executable, "-m", "openvertex", "serve", "--port", "0", "--config", str(config)]
    log = (state_dir / "server.log").open("w")
    process = subprocess.Popen([*command, "--log-level", "warning"], stdout=subprocess.PIPE, stderr=log, text=True)
    assert process.stdout is not None
    try:
        base = process.stdout.readline().split()[-1]
        while httpx.get(f"{base}/readyz").status_code != 200:
            time.sleep(0.05)
        yield base, process.pid
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def _load(send: Callable[[str], Any], texts: list[str], clients: int) -> tuple[float, list[float]]:
    """`clients` workers taking the next text from one list until it is empty: (seconds, latencies).
    Each worker sends one untimed request first (connections opened, everything warm)."""
    await asyncio.gather(*(send(text) for text in texts[:clients]))
    queue = iter(texts)
    latencies: list[float] = []

    async def worker() -> None:
        for text in queue:  # shared: each worker takes the next text
            started = time.perf_counter()
            await send(text)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - started, latencies


def openvertex_rate(base: str, pid: int, texts: list[str], clients: int) -> dict[str, float]:
    async def run() -> tuple[float, list[float]]:
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="bench", max_retries=0, timeout=120) as client:

            async def send(text: str) -> None:
                await client.embeddings.create(model=MODEL, input=text)

            return await _load(send, texts, clients)

    server_before, client_before = cpu_seconds(pid), time.process_time()
    elapsed, latencies = asyncio.run(run())
    server_cpu, client_cpu = cpu_seconds(pid) - server_before, time.process_time() - client_before
    count = len(texts) + clients  # the warm-up requests are in the CPU figures: spread over all
    return {
        "per_s": len(texts) / elapsed,
        "latency_p50_ms": median(latencies) * 1000,
        "server_cpu_ms_per_embedding": server_cpu / count * 1000,
        "client_cpu_ms_per_embedding": client_cpu / count * 1000,
    }


def openvertex_vectors(base: str, texts: list[str]) -> np.ndarray:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="bench", max_retries=0, timeout=120)
    vectors: list[list[float]] = []
    for start in range(0, len(texts), 64):
        answer = client.embeddings.create(model=MODEL, input=texts[start : start + 64], encoding_format="float")
        vectors += [item.embedding for item in sorted(answer.data, key=lambda item: item.index)]
    return np.array(vectors)


# ---------------------------------------------------------------------- the reference and the engine


def reference_rate(model: Any, texts: list[str], clients: int) -> dict[str, float]:
    """One text per encode() at 1 client; batches of `clients` texts otherwise (its best case)."""
    model.encode(texts[:clients], batch_size=clients, show_progress_bar=False)  # warm, as the server's clients are
    before = time.process_time()
    started = time.perf_counter()
    for start in range(0, len(texts), clients):
        model.encode(texts[start : start + clients], batch_size=clients, show_progress_bar=False)
    elapsed = time.perf_counter() - started
    return {"per_s": len(texts) / elapsed, "cpu_ms_per_embedding": (time.process_time() - before) / len(texts) * 1000}


def engine_rate(engine: Any, texts: list[str], clients: int) -> dict[str, float]:
    """openvertex's engine without HTTP: tokenize and embed one text per call, as the backend does."""

    async def send(text: str) -> None:
        await engine.embed([engine.tokenize(text)])

    before = time.process_time()
    elapsed, latencies = asyncio.run(_load(send, texts, clients))
    cpu = (time.process_time() - before) / (len(texts) + clients) * 1000  # the warm-up requests included
    return {"per_s": len(texts) / elapsed, "latency_p50_ms": median(latencies) * 1000, "cpu_ms_per_embedding": cpu}


def open_engine(directory: Path) -> Any:
    from llama_cpp._logger import set_verbose

    from openvertex.backends.embedding.engine import EmbeddingEngine
    from openvertex.backends.embedding.model_files import gguf_path
    from openvertex.settings import EmbeddingBackendSettings

    set_verbose(False)
    settings = EmbeddingBackendSettings(type="embedding")  # the server's defaults
    return EmbeddingEngine(
        gguf_path(settings.model, directory),
        n_threads=THREADS,
        max_batch_tokens=settings.max_batch_tokens,
        max_sequences=settings.max_batch_texts,
        max_waiting=settings.max_waiting_texts,
    )


def open_reference() -> Any:
    import torch
    from sentence_transformers import SentenceTransformer

    from openvertex.backends.embedding.model_files import packaged_folder
    from openvertex.settings import DEFAULT_EMBEDDING_MODEL

    torch.set_num_threads(THREADS)
    return SentenceTransformer(str(packaged_folder(DEFAULT_EMBEDDING_MODEL)), device="cpu")


# ---------------------------------------------------------------------- quality


def quality(
    ours: np.ndarray, reference: np.ndarray, pairs: list[tuple[str, str, str]], texts: list[str]
) -> dict[str, Any]:
    """`ours` and `reference` are the vectors of `texts`, whose tail is the pairs' sentences (a, b)."""
    from scipy.stats import spearmanr

    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    ours = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    between = np.sum(ours * reference, axis=1)
    first = len(texts) - 2 * len(pairs)
    pair_cosines = {}
    for name, vectors in (("openvertex", ours), ("reference", reference)):
        a, b = vectors[first::2], vectors[first + 1 :: 2]
        pair_cosines[name] = np.sum(a * b, axis=1)
    rho = float(spearmanr(pair_cosines["openvertex"], pair_cosines["reference"]).statistic)
    kinds = np.array([kind for kind, _, _ in pairs])
    return {
        "texts": len(texts),
        "pairs": {kind: int(np.sum(kinds == kind)) for kind in PAIR_KINDS},
        "spearman": rho,
        "target_spearman": TARGET_SPEARMAN,
        "max_abs_difference": float(np.max(np.abs(ours - reference))),
        "min_cosine_between": float(np.min(between)),
        "mean_pair_cosine": {
            name: {kind: float(np.mean(cosines[kinds == kind])) for kind in PAIR_KINDS}
            for name, cosines in pair_cosines.items()
        },
    }


# ---------------------------------------------------------------------- the run


def texts_for(pool: list[str], count: int, round_number: int) -> list[str]:
    """`count` texts from the pool, starting further along each round (the same for every contender)."""
    start = round_number * 97
    return [pool[(start + i) % len(pool)] for i in range(count)]


def busy_seconds() -> float:
    """CPU time every process on the machine has spent, all cores together (/proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq = map(int, Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / CLOCK_TICKS


def alone(run: Callable[[], dict[str, float]], server_pid: int) -> dict[str, float]:
    """`run`'s figures and the cores that processes other than this one and the server kept busy
    meanwhile (near 0 on a quiet machine). A shared machine's other work skews every figure, so a
    measurement disturbed by more than INTERFERENCE_CORES is taken again (the least disturbed of
    up to three tries is kept)."""
    tries: list[dict[str, float]] = []
    while len(tries) < 3 and (not tries or tries[-1]["other_processes_cores"] > INTERFERENCE_CORES):
        before = busy_seconds(), time.process_time(), cpu_seconds(server_pid), time.perf_counter()
        figures = run()
        after = busy_seconds(), time.process_time(), cpu_seconds(server_pid), time.perf_counter()
        busy, own, server_cpu, wall = (b - a for a, b in zip(before, after, strict=True))
        tries.append(figures | {"other_processes_cores": max(busy - own - server_cpu, 0.0) / wall})
    return min(tries, key=lambda figures: figures["other_processes_cores"]) | {"tries": len(tries)}


def measure_rounds(
    contenders: dict[str, Callable[[list[str], int], dict[str, float]]],
    pool: list[str],
    requests: dict[int, int],
    rounds: int,
    server_pid: int,
) -> list[dict[str, Any]]:
    per_round: list[dict[str, Any]] = []
    names = list(contenders)
    for number in range(rounds):
        order = names[number % len(names) :] + names[: number % len(names)]
        measured: dict[str, Any] = {"order": order, "loadavg_1m": os.getloadavg()[0], "levels": {}}
        for clients, count in requests.items():
            texts = texts_for(pool, count, number)
            measured["levels"][str(clients)] = {
                name: alone(partial(contenders[name], texts, clients), server_pid) for name in order
            }
        per_round.append(measured)
        figures = {c: {n: round(f["per_s"], 1) for n, f in level.items()} for c, level in measured["levels"].items()}
        print(f"round {number + 1}/{rounds} ({', '.join(order)} first→last): {figures}", flush=True)
    return per_round


def summary(per_round: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    levels: dict[str, Any] = {}
    for clients in per_round[0]["levels"]:
        rows = [r["levels"][clients] for r in per_round]
        level: dict[str, Any] = {}
        for name in names:
            level[name] = {key: median(row[name][key] for row in rows) for key in rows[0][name]}
            if name != "reference":
                ratios = [row[name]["per_s"] / row["reference"]["per_s"] for row in rows]
                level[name]["vs_reference"] = median(ratios)
        levels[clients] = level
    return levels


def report(result: dict[str, Any]) -> None:
    print(
        f"\n{result['cpu']['model']}, {THREADS} cores; "
        f"threads: openvertex engine {THREADS}, torch {result['torch_threads']}"
    )
    rounds, load = result["rounds_run"], result["loadavg_start"]
    print(f"embeddings/s, medians of {rounds} interleaved rounds (load average at start {load})")
    print(
        f"{'clients':>7} {'sentence-transformers':>22} {'openvertex HTTP':>16} {'ratio':>6} {'engine':>8} {'ratio':>6}"
    )
    for clients, level in result["levels"].items():
        engine = level.get("engine")
        engine_text = f"{engine['per_s']:>8.1f} {engine['vs_reference']:>5.2f}x" if engine else ""
        ours = level["openvertex"]
        print(
            f"{clients:>7} {level['reference']['per_s']:>22.1f} {ours['per_s']:>16.1f}"
            f" {ours['vs_reference']:>5.2f}x {engine_text}"
        )
    print("(reference at 32 clients: encode() of batches of 32 texts, its best case; target ≥ 1.00x)")
    for clients, level in result["levels"].items():
        ours = level["openvertex"]
        print(
            f"openvertex at {clients:>2} clients: p50 {ours['latency_p50_ms']:.1f} ms, CPU per embedding:"
            f" server {ours['server_cpu_ms_per_embedding']:.2f} ms,"
            f" openai clients {ours['client_cpu_ms_per_embedding']:.2f} ms;"
            f" reference {level['reference']['cpu_ms_per_embedding']:.2f} ms"
            + (f", engine in-process {level['engine']['cpu_ms_per_embedding']:.2f} ms" if "engine" in level else "")
        )
    disturbed = [
        f"round {number} {clients} {name}: {figures['other_processes_cores']:.2f}"
        for number, measured in enumerate(result["per_round"], 1)
        for clients, level in measured["levels"].items()
        for name, figures in level.items()
        if figures["other_processes_cores"] > INTERFERENCE_CORES
    ]
    if disturbed:
        print(f"WARNING: other processes kept cores busy (after 3 tries) in {'; '.join(disturbed)}")
    q = result["quality"]
    print(
        f"similarity set {q['pairs']}: Spearman {q['spearman']:.5f} (target ≥ {TARGET_SPEARMAN});"
        f" over {q['texts']} texts max |Δ| {q['max_abs_difference']:.2e}, min cosine {q['min_cosine_between']:.6f}"
    )
    for name, means in q["mean_pair_cosine"].items():
        print(f"  mean pair cosine, {name}: " + ", ".join(f"{kind} {value:.3f}" for kind, value in means.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", default="1:160,32:640", help="clients:texts per round, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=25)
    parser.add_argument("--no-engine", action="store_true", help="leave out the in-process engine (diagnostic)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "embeddings.json")
    args = parser.parse_args()
    requests = {int(c): int(n) for c, n in (level.split(":") for level in args.requests.split(","))}
    pool, pairs = make_pool(args.seed), make_pairs(args.seed)
    every_text = pool + [sentence for _, a, b in pairs for sentence in (a, b)]
    loadavg_start = round(os.getloadavg()[0], 2)
    reference = open_reference()
    with tempfile.TemporaryDirectory(prefix="openvertex-embeddings-bench-") as work, server(Path(work)) as (base, pid):
        contenders: dict[str, Callable[[list[str], int], dict[str, float]]] = {
            "reference": lambda texts, clients: reference_rate(reference, texts, clients),
            "openvertex": lambda texts, clients: openvertex_rate(base, pid, texts, clients),
        }
        engine = None if args.no_engine else open_engine(Path(work) / "engine")
        if engine is not None:
            contenders["engine"] = lambda texts, clients: engine_rate(engine, texts, clients)
        try:
            per_round = measure_rounds(contenders, pool, requests, args.rounds, pid)
        finally:
            if engine is not None:
                engine.close()
        ours = openvertex_vectors(base, every_text)
    theirs = reference.encode(every_text, batch_size=32, show_progress_bar=False)
    import torch

    result: dict[str, Any] = {
        "benchmark": "embeddings/s at 1 and 32 clients, openvertex (HTTP) vs sentence-transformers, same model",
        "model": "all-MiniLM-L6-v2",
        "cpu": cpu_facts(),
        "cores": THREADS,
        "torch_threads": torch.get_num_threads(),
        "openvertex_engine_threads": THREADS,
        "loadavg_start": loadavg_start,
        "loadavg_end": round(os.getloadavg()[0], 2),
        "rounds_run": args.rounds,
        "requests_per_round": requests,
        "seed": args.seed,
        "target_ratio": TARGET_RATIO,
        "levels": summary(per_round, list(contenders)),
        "quality": quality(ours, theirs, pairs, every_text),
        "per_round": per_round,
    }
    report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
