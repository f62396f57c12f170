"""Per-sequence sampling: the knobs a request sets, and llama.cpp's sampler chain for them."""

from __future__ import annotations

import random
from dataclasses import dataclass

import llama_cpp

PENALTY_LAST_N = 64  # tokens the repetition penalties look back over (llama.cpp's default)


@dataclass(frozen=True, slots=True)
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int | None
    max_tokens: int  # already clamped to the context left after the prompt
    stop: tuple[str, ...]
    grammar: str | None
    logprobs: int | None = None  # None: not asked; else how many top alternatives per token


def candidate_seed(seed: int | None, candidate: int) -> int:
    """Candidate i of a seeded request uses seed + i, so n > 1 gives distinct, repeatable answers."""
    if seed is None:
        return random.getrandbits(32)
    return (seed + candidate) % 2**32


def sampler_chain(
    vocab: llama_cpp.llama_vocab_p, n_vocab: int, sampling: Sampling, seed: int
) -> llama_cpp.llama_sampler_p:
    """The same chain, in the same order, that llama-cpp-python's Llama.generate builds."""
    chain: llama_cpp.llama_sampler_p = llama_cpp.llama_sampler_chain_init(
        llama_cpp.llama_sampler_chain_default_params()
    )
    steps = [
        llama_cpp.llama_sampler_init_penalties(
            n_vocab, PENALTY_LAST_N, sampling.repeat_penalty, sampling.frequency_penalty, sampling.presence_penalty
        )
    ]
    if sampling.grammar is not None:
        steps.append(llama_cpp.llama_sampler_init_grammar(vocab, sampling.grammar.encode(), b"root"))
    if sampling.temperature == 0.0:
        steps.append(llama_cpp.llama_sampler_init_greedy())
    else:
        steps += [
            llama_cpp.llama_sampler_init_top_k(sampling.top_k),
            llama_cpp.llama_sampler_init_typical(1.0, 1),
            llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1),
            llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1),
            llama_cpp.llama_sampler_init_temp(sampling.temperature),
            llama_cpp.llama_sampler_init_dist(seed),
        ]
    for step in steps:
        llama_cpp.llama_sampler_chain_add(chain, step)
    return chain
