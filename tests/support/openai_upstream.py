"""An OpenAI-compatible upstream on loopback that answers chat completions and embeddings as vLLM
does, for the tests of self-deployed endpoints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.support.stub import Recorded, Reply, stub_server

PROMPT_TOKENS, COMPLETION_TOKENS = 30, 3
TOKENS_PER_INPUT = 7  # an embedding input's prompt tokens
WORDS = ["Hel", "lo", "!"]


@dataclass
class Upstream:
    """Answers chat completions as vLLM does: a whole answer with its usage; a stream of one frame
    per token, then, only when asked (`reports_usage` and stream_options.include_usage), a frame
    with empty choices and the usage; then [DONE]."""

    reports_usage: bool = True
    words: list[str] = field(default_factory=lambda: list(WORDS))
    bodies: list[bytes] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # of every POST, in order
    answers: list[bytes] = field(default_factory=list)  # the embeddings answers, as sent
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

    def embed(self, body: bytes) -> bytes:
        """vLLM's embeddings answer: a vector per input, and `prompt_tokens` (no completion tokens)."""
        self.bodies.append(body)
        request = json.loads(body)
        inputs = request["input"] if isinstance(request["input"], list) else [request["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(str(text))), 0.5, -0.25]}
            for i, text in enumerate(inputs)
        ]
        tokens = TOKENS_PER_INPUT * len(inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        answer = json.dumps({"object": "list", "data": data, "model": "served", "usage": usage}).encode()
        self.answers.append(answer)
        return answer


@contextmanager
def upstream_server(upstream: Upstream) -> Iterator[Upstream]:
    def answer(request: Recorded) -> Reply:
        if request.method == "GET":  # a health check
            return Reply(200, b"{}")
        upstream.paths.append(request.path)
        if request.path.endswith("/embeddings"):
            return Reply(200, upstream.embed(request.body), (("content-type", "application/json"),))
        content_type, body = upstream.answer(request.body)
        return Reply(200, body, (("content-type", content_type),))

    with stub_server([], answer) as stub:
        upstream.url = f"{stub.url}/v1"
        yield upstream
