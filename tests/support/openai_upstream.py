"""An OpenAI-compatible upstream on loopback that answers chat completions as vLLM does, for the
tests of self-deployed endpoints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.support.stub import Recorded, Reply, stub_server

PROMPT_TOKENS, COMPLETION_TOKENS = 30, 3
WORDS = ["Hel", "lo", "!"]


@dataclass
class Upstream:
    """Answers chat completions as vLLM does: a whole answer with its usage; a stream of one frame
    per token, then, only when asked (`reports_usage` and stream_options.include_usage), a frame
    with empty choices and the usage; then [DONE]."""

    reports_usage: bool = True
    words: list[str] = field(default_factory=lambda: list(WORDS))
    bodies: list[bytes] = field(default_factory=list)
    url: str = ""

    def answer(self, body: bytes) -> tuple[str, bytes]:
        self.bodies.append(body)
        request = json.loads(body)
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        }
        head = {"id": "c", "created": 1, "model": "served"}
        if not request.get("stream"):
            message = {"role": "assistant", "content": "".join(self.words)}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return "application/json", json.dumps(
                {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
            ).encode()
        chunk = {**head, "object": "chat.completion.chunk"}
        frames = [
            {
                **chunk,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": word},
                        "finish_reason": "stop" if i == len(self.words) - 1 else None,
                    }
                ],
            }
            for i, word in enumerate(self.words)
        ]
        if self.reports_usage and (request.get("stream_options") or {}).get("include_usage"):
            frames.append({**chunk, "choices": [], "usage": usage})
        events = b"".join(b"data: " + json.dumps(frame).encode() + b"\n\n" for frame in frames)
        return "text/event-stream", events + b"data: [DONE]\n\n"


@contextmanager
def upstream_server(upstream: Upstream) -> Iterator[Upstream]:
    def answer(request: Recorded) -> Reply:
        if request.method == "GET":  # a health check
            return Reply(200, b"{}")
        content_type, body = upstream.answer(request.body)
        return Reply(200, body, (("content-type", content_type),))

    with stub_server([], answer) as stub:
        upstream.url = f"{stub.url}/v1"
        yield upstream
