"""Per-sequence sampling: the knobs a request sets, and llama.cpp's sampler chain for them."""

from __future__ import annotations

import ctypes
import random
from dataclasses import dataclass

import llama_cpp
import numpy as np
import numpy.typing as npt

PENALTY_LAST_N = 64  # tokens the repetition penalties look back over (llama.cpp's default)


@dataclass(frozen=True, slots=True)
class Thinking:
    """A reasoning phase before the answer: at most `budget` thought tokens, ended by the model
    writing `close_text`, or by feeding it `close_tokens` when the budget runs out."""

    budget: int
    close_text: str
    close_tokens: tuple[int, ...]


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
    grammar_trigger: str | None = None  # the grammar applies from where this text first appears on
    thinking: Thinking | None = None


def candidate_seed(seed: int | None, candidate: int) -> int:
    """Candidate i of a seeded request uses seed + i, so n > 1 gives distinct, repeatable answers."""
    if seed is None:
        return random.getrandbits(32)
    return (seed + candidate) % 2**32


def _penalties_only_lower(sampling: Sampling) -> bool:
    return sampling.repeat_penalty >= 1.0 and sampling.frequency_penalty >= 0.0 and sampling.presence_penalty >= 0.0


def sampler_chain(
    vocab: llama_cpp.llama_vocab_p, n_vocab: int, sampling: Sampling, seed: int
) -> llama_cpp.llama_sampler_p:
    """llama-cpp-python's Llama.generate chain (penalties, top-k, typical, top-p, min-p,
    temperature, seeded draw), with an exact top-k cut in front of the penalties; the grammar
    is applied apart (`SequenceSampler`)."""
    chain: llama_cpp.llama_sampler_p = llama_cpp.llama_sampler_chain_init(
        llama_cpp.llama_sampler_chain_default_params()
    )
    steps = []
    keep = 1 if sampling.temperature == 0.0 else sampling.top_k
    if keep > 0 and _penalties_only_lower(sampling):
        # The penalties touch at most PENALTY_LAST_N distinct tokens and only lower them, so
        # the `keep` best after them are among the keep + PENALTY_LAST_N best before them:
        # cutting to those first is exact, and spares scoring the whole vocabulary.
        steps.append(llama_cpp.llama_sampler_init_top_k(keep + PENALTY_LAST_N))
    steps.append(
        llama_cpp.llama_sampler_init_penalties(
            n_vocab, PENALTY_LAST_N, sampling.repeat_penalty, sampling.frequency_penalty, sampling.presence_penalty
        )
    )
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


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data


class SequenceSampler:
    """One sequence's sampling. With a grammar, the token is first drawn as if there were none
    and only checked against the grammar; the grammar masks the whole vocabulary only when it
    rejects that token (llama.cpp's own common sampler does the same): most tokens of a JSON
    answer are what the grammar allows anyway, and masking 49k candidates a token is the
    expensive part of constrained decoding.

    With a trigger the answer is free until the trigger text appears; from there on it must
    follow the grammar. The switch is made here, not by llama.cpp's lazy grammar, which aborts
    the process when the text that completes the trigger goes on in a way the grammar refuses
    ("use <tool_call>, then…"): here such text is simply not a call.
    """

    def __init__(self, vocab: llama_cpp.llama_vocab_p, n_vocab: int, sampling: Sampling, seed: int) -> None:
        self._vocab = vocab
        self._n_vocab = n_vocab
        self._chain = sampler_chain(vocab, n_vocab, sampling, seed)
        self._rules = sampling.grammar
        self._trigger = sampling.grammar_trigger
        self._grammar = self._new_grammar() if self._rules is not None and self._trigger is None else None
        self._seen = ""  # the answer's recent text while the trigger has not appeared
        self._candidates = np.zeros(n_vocab if self._rules else 0, dtype=_TOKEN_DATA)
        self._ids = np.arange(n_vocab if self._rules else 0, dtype=np.int32)
        self._one = (llama_cpp.llama_token_data * 1)()
        self._piece = ctypes.create_string_buffer(256)
        self.constrained = sampling.thinking is None  # the grammar is for the answer, not the reasoning

    def _new_grammar(self) -> llama_cpp.llama_sampler_p:
        assert self._rules is not None
        grammar: llama_cpp.llama_sampler_p = llama_cpp.llama_sampler_init_grammar(
            self._vocab, self._rules.encode(), b"root"
        )
        return grammar

    def sample(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        if self._rules is None or not self.constrained:
            return int(llama_cpp.llama_sampler_sample(self._chain, ctx, index))
        if self._grammar is None:  # waiting for the trigger
            token = int(llama_cpp.llama_sampler_sample(self._chain, ctx, index))
            self._watch(token)
            return token
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(self._n_vocab,))
        token = self._draw(logits, with_grammar=False)
        if not _allowed(self._grammar, self._one, token, float(logits[token])):
            token = self._draw(logits, with_grammar=True)
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    @property
    def armed(self) -> bool:
        """The grammar is in force (from the start, or since its trigger appeared)."""
        return self._grammar is not None

    def begin_answer(self, text: str) -> None:
        """The reasoning is over; `text` is what the answer already holds (the rest of the
        token that closed the reasoning), which the grammar must have seen too."""
        self.constrained = True
        text = text.lstrip()
        if not text or self._rules is None:
            return
        if self._grammar is None:
            self._see(text)
            return
        grammar = self._new_grammar()
        if self._feed(grammar, text):
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = grammar
        else:
            llama_cpp.llama_sampler_free(grammar)

    def _watch(self, token: int) -> None:
        size = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        self._see(self._piece.raw[: max(size, 0)].decode("utf-8", errors="ignore"))

    def _see(self, text: str) -> None:
        """Arm the grammar once the trigger has appeared and what follows it fits the grammar."""
        assert self._trigger is not None
        self._seen += text
        start = self._seen.find(self._trigger)
        if start < 0:
            self._seen = self._seen[-len(self._trigger) :]
            return
        grammar = self._new_grammar()
        if self._feed(grammar, self._seen[start:]):
            self._grammar = grammar
        else:
            llama_cpp.llama_sampler_free(grammar)
            self._seen = self._seen[start + 1 :]

    def _feed(self, grammar: llama_cpp.llama_sampler_p, text: str) -> bool:
        encoded = text.encode()
        tokens = (llama_cpp.llama_token * (len(encoded) + 1))()
        count = int(llama_cpp.llama_tokenize(self._vocab, encoded, len(encoded), tokens, len(tokens), False, False))
        for token in tokens[: max(count, 0)]:
            if not _allowed(grammar, self._one, token, 0.0):
                return False
            llama_cpp.llama_sampler_accept(grammar, token)
        return count >= 0

    def _draw(self, logits: npt.NDArray[np.float32], *, with_grammar: bool) -> int:
        candidates = self._candidates
        candidates["id"] = self._ids  # the chain sorts the array in place
        candidates["logit"] = logits
        candidates["p"] = 0.0
        data = candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        array = llama_cpp.llama_token_data_array(data=data, size=self._n_vocab, selected=-1, sorted=False)
        if with_grammar:
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(array))
        if array.selected < 0:
            raise RuntimeError("the grammar allows no token here")
        return int(array.data[array.selected].id)

    def free(self) -> None:
        llama_cpp.llama_sampler_free(self._chain)
        if self._grammar is not None:
            llama_cpp.llama_sampler_free(self._grammar)


def _allowed(
    grammar: llama_cpp.llama_sampler_p, one: ctypes.Array[llama_cpp.llama_token_data], token: int, logit: float
) -> bool:
    """Would the grammar take `token` next? (Asked on a one-candidate array: it never throws.)"""
    one[0] = llama_cpp.llama_token_data(token, logit, 0.0)
    single = llama_cpp.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)
    llama_cpp.llama_sampler_apply(grammar, ctypes.byref(single))
    return bool(np.isfinite(one[0].logit))
