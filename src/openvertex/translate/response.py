"""GenerateContentResponse → chat.completion (spec §4).

Parts become deltas through `PartTranslator`, the same code the stream uses; a whole
response is those deltas merged, so streamed and unstreamed answers cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from openvertex.protocol import chat_completions as oa
from openvertex.protocol import generate_content as gc
from openvertex.translate.arguments import ArgumentWriter, compact_json
from openvertex.translate.citations import url_citations
from openvertex.translate.context import ResponseContext, answer_created, answer_tool_call_id
from openvertex.translate.logprobs import logprobs_result_to_openai
from openvertex.translate.tables import FINISH_REASON_DEFAULT, FINISH_REASON_TO_OPENAI
from openvertex.translate.thoughts import close_tag, open_tag
from openvertex.translate.usage import usage_metadata_to_usage


def _google(**fields: object) -> oa.ExtraContentOut:
    return oa.ExtraContentOut(google=oa.GoogleExtrasOut.model_validate(fields))


@dataclass
class _StreamedCall:
    """A call whose arguments arrive in pieces (spec §3.5): every piece repeats id and name."""

    index: int
    id: str
    name: str
    writer: ArgumentWriter = field(default_factory=ArgumentWriter)


@dataclass
class PartTranslator:
    """One candidate's parts → deltas; tracks the open thought tag and tool-call indexes."""

    ctx: ResponseContext
    # The answer's own responseId (None: the backend gave none) and this candidate's index: what
    # its calls' ids are made from.
    response_id: str | None = None
    candidate: int = 0
    in_thought: bool = False
    tool_calls: int = 0
    saw_tool_call: bool = field(default=False)
    streamed: _StreamedCall | None = None

    def translate(self, part: gc.Part) -> oa.Delta | None:
        if part.function_call is not None:
            return self._tool_call(part)
        if part.inline_data is not None:
            blob = part.inline_data
            return oa.Delta(audio=oa.AudioOut(data=blob.data, extra_content=_google(mime_type=blob.mime_type)))
        if part.text is None:
            # A signature-only part still reaches the client (spec §3.4).
            return (
                oa.Delta(extra_content=_google(thought_signature=part.thought_signature))
                if part.thought_signature
                else None
            )
        return self._text(part.text, thought=bool(part.thought), signature=part.thought_signature)

    def _text(self, text: str, *, thought: bool, signature: str | None) -> oa.Delta:
        marker = self.ctx.thought_marker
        prefix = ""
        if marker is not None and thought and not self.in_thought:
            prefix = open_tag(marker)
        elif marker is not None and not thought and self.in_thought:
            prefix = close_tag(marker)
        self.in_thought = thought
        extras = (
            _google(thought=True if thought else None, thought_signature=signature) if thought or signature else None
        )
        # An empty text part that only carries a signature becomes a metadata-only delta.
        return oa.Delta(content=(prefix + text) or None, extra_content=extras)

    def _tool_call(self, part: gc.Part) -> oa.Delta:
        call = part.function_call
        assert call is not None
        self.saw_tool_call = True
        streamed = self.streamed
        if streamed is not None and call.name in (None, streamed.name):
            arguments = self._pieces(streamed.writer, call)
            index, call_id, name = streamed.index, streamed.id, streamed.name
        elif call.partial_args is not None or call.will_continue:
            self.streamed = _StreamedCall(self.tool_calls, self._call_id(), call.name or "")
            arguments = self._pieces(self.streamed.writer, call)
            index, call_id, name = self.streamed.index, self.streamed.id, self.streamed.name
            self.tool_calls += 1
        else:
            arguments = compact_json(call.args or {})
            index, call_id, name = self.tool_calls, self._call_id(), call.name or ""
            self.tool_calls += 1
        delta_call = oa.DeltaToolCall(
            index=index,
            id=call_id,
            function=oa.FunctionCallOut(name=name, arguments=arguments),
            extra_content=_google(thought_signature=part.thought_signature) if part.thought_signature else None,
        )
        return oa.Delta(tool_calls=[delta_call])

    def _call_id(self) -> str:
        if self.response_id is None:
            return self.ctx.tool_call_id()
        return answer_tool_call_id(self.response_id, self.candidate, self.tool_calls)

    def _pieces(self, writer: ArgumentWriter, call: gc.FunctionCall) -> str:
        text = "".join(writer.feed(arg) for arg in call.partial_args or [])
        if not call.will_continue:
            text += writer.finish(call.args)
            self.streamed = None
        return text

    def close(self) -> oa.Delta | None:
        """At the end of a candidate: close a thought tag that no answer text closed."""
        if self.in_thought and self.ctx.thought_marker is not None:
            self.in_thought = False
            return oa.Delta(content=close_tag(self.ctx.thought_marker))
        return None

    def finish_reason(self, reason: str | None) -> str:
        if reason in (None, "STOP") and self.saw_tool_call:
            return "tool_calls"
        return FINISH_REASON_TO_OPENAI.get(reason or "STOP", FINISH_REASON_DEFAULT)


def _merge_tool_calls(deltas: list[oa.Delta]) -> list[oa.ToolCallOut]:
    """Pieces of one streamed call share its id; their arguments concatenate."""
    calls: dict[str, oa.ToolCallOut] = {}
    for call in (c for d in deltas for c in d.tool_calls or []):
        known = calls.get(call.id)
        if known is None:
            calls[call.id] = oa.ToolCallOut(id=call.id, function=call.function, extra_content=call.extra_content)
        else:
            known.function = oa.FunctionCallOut(
                name=known.function.name, arguments=known.function.arguments + call.function.arguments
            )
            known.extra_content = known.extra_content or call.extra_content
    return list(calls.values())


def merge_deltas(deltas: list[oa.Delta]) -> oa.ResponseMessage:
    content = "".join(d.content for d in deltas if d.content is not None)
    calls = _merge_tool_calls(deltas)
    signatures = [
        d.extra_content.google.thought_signature
        for d in deltas
        if d.extra_content is not None
        and d.extra_content.google is not None
        and d.extra_content.google.thought_signature
    ]
    audio = [d.audio for d in deltas if d.audio is not None]
    return oa.ResponseMessage(
        content=content or None,
        tool_calls=calls or None,
        audio=audio[-1] if audio else None,
        extra_content=_google(thought_signature=signatures[-1]) if signatures else None,
    )


def candidate_to_choice(
    candidate: gc.Candidate, index: int, ctx: ResponseContext, response_id: str | None = None
) -> oa.Choice:
    translator = PartTranslator(ctx, response_id=response_id, candidate=index)
    parts = candidate.content_parts()
    translated = [translator.translate(part) for part in parts]
    deltas = [d for d in translated if d is not None]
    closing = translator.close()
    if closing is not None:
        deltas.append(closing)
    message = merge_deltas(deltas)
    if candidate.grounding_metadata:
        message.annotations = url_citations(candidate.grounding_metadata, answer_spans(parts, translated))
    return oa.Choice(
        index=index,
        finish_reason=translator.finish_reason(candidate.finish_reason),
        message=message,
        logprobs=logprobs_result_to_openai(candidate.logprobs_result),
    )


def answer_spans(
    parts: Sequence[gc.Part], translated: Sequence[oa.Delta | None], emitted: int = 0
) -> list[tuple[int, str]]:
    """Where each answer text part sits in the content its delta (`translated[i]` is part i's)
    adds after `emitted` characters: at the delta's end (it may open with a thought's closing tag)."""
    spans = []
    for part, delta in zip(parts, translated, strict=True):
        if delta is None or not delta.content:
            continue
        emitted += len(delta.content)
        if part.text and not part.thought and delta.content.endswith(part.text):
            spans.append((emitted - len(part.text), part.text))
    return spans


def blocked_choice() -> oa.Choice:
    """A prompt blocked before any candidate: content_filter with an empty message (spec §4.3 [I])."""
    return oa.Choice(index=0, finish_reason="content_filter", message=oa.ResponseMessage(content=None))


def generate_content_to_completion(response: gc.GenerateContentResponse, ctx: ResponseContext) -> oa.ChatCompletion:
    candidates = response.candidates or []
    choices = [
        candidate_to_choice(c, c.index if c.index is not None else i, ctx, response.response_id)
        for i, c in enumerate(candidates)
    ]
    return oa.ChatCompletion(
        id=response.response_id or ctx.response_id,
        created=answer_created(response.create_time, ctx),
        model=ctx.model,
        choices=choices or [blocked_choice()],
        usage=usage_metadata_to_usage(response.usage_metadata or gc.UsageMetadata()),
    )
