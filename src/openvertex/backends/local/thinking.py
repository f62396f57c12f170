"""Thinking on the local model: how a model reasons, and how much a request lets it.

A model whose chat template knows `<think>` (Qwen3, DeepSeek-R1 distills) reasons in its own
format ("native"). Any other instruct model gets an explicit reasoning phase ("prompted"):
it is asked to reason inside the same tags first, and its answer is then generated after
that reasoning. Either way the reasoning is opened for the model, counted in tokens, and
closed for it when the budget runs out.
"""

from __future__ import annotations

from typing import Literal

from openvertex.protocol import generate_content as gc

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"
OPENING = OPEN_TAG + "\n"  # what the answer turn starts with when the model is to reason
CLOSING = "\n" + CLOSE_TAG + "\n\n"  # what is fed to the model when its budget runs out
# Gemini 3's thinking levels as budgets (the same figures reasoning_effort maps to).
LEVEL_TO_BUDGET = {"MINIMAL": 1024, "LOW": 1024, "MEDIUM": 8192, "HIGH": 24576, "XHIGH": 32768}
INSTRUCTION = (
    f"Before you answer, think the question through step by step inside {OPEN_TAG} and {CLOSE_TAG}. "
    f"After {CLOSE_TAG}, give your final answer."
)

Mode = Literal["native", "prompted", "off"]


def resolve_mode(setting: str, template_source: str | None) -> Mode:
    if setting == "auto":
        return "native" if template_source is not None and CLOSE_TAG in template_source else "prompted"
    assert setting in ("native", "prompted", "off")
    return setting  # type: ignore[return-value]


def thinking_budget(config: gc.ThinkingConfig | None, mode: Mode, *, dynamic: int) -> int:
    """Thought tokens this request allows (0: no thinking).

    Unasked, a native reasoning model thinks as it was trained to (dynamically, as Gemini
    does by default); a prompted one does not, since it has no reasoning of its own.
    """
    if mode == "off":
        return 0
    default = dynamic if mode == "native" else 0
    if config is None:
        return default
    if config.thinking_budget is not None:
        return dynamic if config.thinking_budget == -1 else config.thinking_budget
    if config.thinking_level is not None:
        return LEVEL_TO_BUDGET.get(config.thinking_level.upper(), dynamic)
    return dynamic if config.include_thoughts else default
