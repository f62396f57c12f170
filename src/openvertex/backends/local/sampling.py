"""Per-sequence sampling: the knobs a request sets, and llama.cpp's sampler chain for them."""

from __future__ import annotations

import ctypes
import random
from dataclasses import dataclass

import llama_cpp
import llguidance
import llguidance.numpy
import numpy as np
import numpy.typing as npt

from openvertex.backends.local.grammar import Grammar
from openvertex.errors import InvalidArgumentError

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
    grammar: Grammar | None
    logprobs: int | None = None  # None: not asked; else how many top alternatives per token
    thinking: Thinking | None = None
    calls: tuple[str, str] | None = None  # a call block's tags: stop sequences never cut inside one


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
    rejects that token (llama.cpp's own common sampler does the same). Drawing from p and, if
    refused, from the masked p gives exactly the masked distribution, and most tokens of a JSON
    answer are what the grammar allows anyway.

    A lazy grammar (function calls with tool_choice auto) lets text through until its trigger
    appears; llguidance follows the text itself, so what comes after the trigger is always held
    to the grammar, whichever tokens wrote it.
    """

    def __init__(self, vocab: llama_cpp.llama_vocab_p, n_vocab: int, sampling: Sampling, seed: int) -> None:
        self._vocab = vocab
        self._n_vocab = n_vocab
        self._chain = sampler_chain(vocab, n_vocab, sampling, seed)
        self._grammar = sampling.grammar
        self._matcher = sampling.grammar.matcher() if sampling.grammar is not None else None
        self._bitmask = llguidance.numpy.allocate_token_bitmask(1, n_vocab) if self._grammar else None
        self._candidates = np.zeros(n_vocab if self._grammar else 0, dtype=_TOKEN_DATA)
        self._ids = np.arange(n_vocab if self._grammar else 0, dtype=np.int32)
        self.constrained = sampling.thinking is None  # the grammar is for the answer, not the reasoning

    def sample(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        matcher = self._matcher
        if matcher is None or not self.constrained:
            return int(llama_cpp.llama_sampler_sample(self._chain, ctx, index))
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(self._n_vocab,))
        token = self._draw(logits)
        if matcher.try_consume_tokens([token]) != 1:
            token = self._draw(np.where(self._allowed(matcher), logits, -np.inf).astype(np.float32))
            matcher.consume_token(token)
        if matcher.is_error():
            raise InvalidArgumentError(f"the output could not be held to the schema: {matcher.get_error()}")
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    @property
    def complete(self) -> bool:
        """The grammar allows nothing more: the answer ends here without another token."""
        return self._matcher is not None and self.constrained and self._matcher.is_stopped()

    def begin_answer(self, text: str) -> str:
        """The reasoning is over; `text` is what came after its closing tag in the same token.
        Returns the part of it the grammar takes: the answer starts there, constrained."""
        self.constrained = True
        text = text.lstrip()
        if self._matcher is None or self._grammar is None or not text:
            return text
        tokens = self._grammar.tokenizer.tokenize_str(text)
        taken = self._matcher.try_consume_tokens(tokens)
        return text if taken == len(tokens) else self._grammar.tokenizer.decode_str(tokens[:taken])

    def _allowed(self, matcher: llguidance.LLMatcher) -> npt.NDArray[np.bool_]:
        assert self._bitmask is not None
        llguidance.numpy.fill_next_token_bitmask(matcher, self._bitmask)
        bits = np.unpackbits(self._bitmask[0].view(np.uint8), bitorder="little")[: self._n_vocab]
        return bits.view(np.bool_)

    def _draw(self, logits: npt.NDArray[np.float32]) -> int:
        candidates = self._candidates
        candidates["id"] = self._ids  # the chain sorts the array in place
        candidates["logit"] = logits
        candidates["p"] = 0.0
        data = candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        array = llama_cpp.llama_token_data_array(data=data, size=self._n_vocab, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(array))
        token = int(array.data[array.selected].id) if array.selected >= 0 else -1
        if token < 0 or not np.isfinite(logits[token]):
            raise InvalidArgumentError("the schema allows no output here")
        return token

    def free(self) -> None:
        llama_cpp.llama_sampler_free(self._chain)
