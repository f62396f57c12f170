"""Would converting the shipped Q4_1 SmolLM2 to another format pay? Speed and quality, one run.

Requantizes the packaged GGUF (llama.cpp's `llama_model_quantize`, to a scratch directory)
to Q8_0, Q4_0 and IQ4_NL, then measures for each: raw llama.cpp decode tokens/s with 1 and
8 sequences (the same loop as the concurrency benchmark's ceiling, formats interleaved
round by round) and how many of a fixed set of prompts give the same greedy answer as Q4_1.

    .venv/bin/python benchmarks/model_format.py [--rounds 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import tempfile
from pathlib import Path
from statistics import median
from typing import Any

import concurrency
import llama_cpp

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three primary colors.",
    "What is 12 times 7?",
    "Translate 'good morning' to Spanish.",
    "Who wrote Romeo and Juliet?",
    "Give me a tip for learning to code.",
    "What does a CPU do?",
    "Describe a cat in two sentences.",
    "Why is the sky blue?",
    "Name a famous painter.",
    "What is the boiling point of water?",
    "Suggest a name for a dog.",
    "What is JSON?",
    "Tell me a fun fact about space.",
]
FORMATS = {
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "iq4_nl": llama_cpp.LLAMA_FTYPE_MOSTLY_IQ4_NL,
}


def quantize(source: str, target: Path, ftype: int) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = ftype, True, concurrency.THREADS
    if llama_cpp.llama_model_quantize(source.encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"could not quantize to {target.name}")


def greedy_answers(path: str) -> list[str]:
    llm = llama_cpp.Llama(path, n_ctx=1024, n_threads=concurrency.THREADS, verbose=False)
    answers = []
    for prompt in PROMPTS:
        result: Any = llm.create_chat_completion([{"role": "user", "content": prompt}], temperature=0.0, max_tokens=48)
        answers.append(result["choices"][0]["message"]["content"])
    llm.close()
    return answers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/model_format.json"))
    args = parser.parse_args()
    shipped = concurrency.MODEL_PATH
    with tempfile.TemporaryDirectory() as scratch:
        paths = {"q4_1": shipped}
        for name, ftype in FORMATS.items():
            paths[name] = str(Path(scratch) / f"smollm2-{name}.gguf")
            quantize(shipped, Path(paths[name]), ftype)
        speeds: dict[str, dict[int, list[float]]] = {name: {1: [], 8: []} for name in paths}
        for _ in range(args.rounds):
            for name, path in paths.items():
                concurrency.MODEL_PATH = path
                for sequences in (1, 8):
                    speeds[name][sequences].append(concurrency.raw_ceiling(sequences))
        reference = greedy_answers(shipped)
        result: dict[str, Any] = {"prompts": len(PROMPTS), "formats": {}}
        for name, path in paths.items():
            answers = reference if name == "q4_1" else greedy_answers(path)
            result["formats"][name] = {
                "tokens_per_s_1": median(speeds[name][1]),
                "tokens_per_s_8": median(speeds[name][8]),
                "same_greedy_answer_as_q4_1": sum(a == b for a, b in zip(answers, reference, strict=True)),
                "first_answers": answers[:3],
            }
    base = result["formats"]["q4_1"]
    for name, figures in result["formats"].items():
        one, eight = figures["tokens_per_s_1"], figures["tokens_per_s_8"]
        figures["ratio_vs_q4_1"] = {"1": one / base["tokens_per_s_1"], "8": eight / base["tokens_per_s_8"]}
        print(
            f"{name:>7}: {one:6.1f} tok/s x1 ({figures['ratio_vs_q4_1']['1']:.2f}), {eight:6.1f} tok/s x8"
            f" ({figures['ratio_vs_q4_1']['8']:.2f}), same greedy answer"
            f" {figures['same_greedy_answer_as_q4_1']}/{len(PROMPTS)}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
