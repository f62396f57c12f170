"""Thought signatures issued and checked by openvertex for backends without their own."""

from __future__ import annotations

import asyncio
import base64
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openvertex.errors import InvalidArgumentError
from openvertex.protocol import generate_content as gc
from openvertex.service.signatures import SKIP_VALIDATOR, Kind, ThoughtSigner, load_or_create_secret


@pytest.fixture
def signer(tmp_path: Path) -> ThoughtSigner:
    return ThoughtSigner(load_or_create_secret(tmp_path / "key"))


def test_secret_is_created_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "key"
    first = load_or_create_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == first  # a restart reads the same secret
    signature = ThoughtSigner(first).sign(Kind.FUNCTION_CALL, "f")
    assert ThoughtSigner(load_or_create_secret(path)).verify(signature, Kind.FUNCTION_CALL, "f")


def test_a_damaged_secret_file_is_refused_not_used(tmp_path: Path) -> None:
    for content in ("", "abc", "zz" * 32, "00" * 16):
        path = tmp_path / "key"
        path.write_text(content)
        with pytest.raises(ValueError, match="32-byte hex secret"):
            load_or_create_secret(path)


def test_a_signature_is_bound_to_its_kind_its_function_and_its_secret(signer: ThoughtSigner, tmp_path: Path) -> None:
    signature = signer.sign(Kind.FUNCTION_CALL, "get_weather")
    assert signer.verify(signature, Kind.FUNCTION_CALL, "get_weather")
    assert not signer.verify(signature, Kind.FUNCTION_CALL, "get_time")
    assert not signer.verify(signature, Kind.TEXT)
    assert not ThoughtSigner(b"another secret").verify(signature, Kind.FUNCTION_CALL, "get_weather")
    raw = bytearray(base64.b64decode(signature))
    raw[-1] ^= 1
    assert not signer.verify(base64.b64encode(bytes(raw)).decode(), Kind.FUNCTION_CALL, "get_weather")
    assert not signer.verify("not base64!", Kind.FUNCTION_CALL, "get_weather")


def _call(name: str, signature: str | None = None) -> gc.Part:
    return gc.Part(function_call=gc.FunctionCall(name=name, args={}), thought_signature=signature)


def _result(name: str) -> gc.Part:
    return gc.Part(function_response=gc.FunctionResponse(name=name, response={}))


def _conversation(first: gc.Part, second: gc.Part) -> list[gc.Content]:
    return [
        gc.Content(role="user", parts=[gc.Part(text="weather in Paris and Rome?")]),
        gc.Content(role="model", parts=[first, second]),
        gc.Content(role="user", parts=[_result("get_weather"), _result("get_weather")]),
    ]


def test_the_current_turn_needs_the_first_call_of_each_step_signed(signer: ThoughtSigner) -> None:
    signed = _call("get_weather", signer.sign(Kind.FUNCTION_CALL, "get_weather"))
    signer.check_request(_conversation(signed, _call("get_weather")), required=True)  # parallel: first only
    with pytest.raises(InvalidArgumentError, match=r"`default_api:get_weather` in the 2\. content block"):
        signer.check_request(_conversation(_call("get_weather"), _call("get_weather")), required=True)
    signer.check_request(_conversation(_call("get_weather"), _call("get_weather")), required=False)
    skipped = _call("get_weather", SKIP_VALIDATOR)
    signer.check_request(_conversation(skipped, _call("get_weather")), required=True)


def test_earlier_turns_are_not_held_to_it_but_bad_signatures_always_are(signer: ThoughtSigner) -> None:
    earlier = [
        *_conversation(_call("get_weather"), _call("get_weather")),
        gc.Content(role="user", parts=[gc.Part(text="thanks")]),
    ]
    signer.check_request(earlier, required=True)
    foreign = _call("get_weather", ThoughtSigner(b"other").sign(Kind.FUNCTION_CALL, "get_weather"))
    with pytest.raises(InvalidArgumentError, match="Thought signature is not valid"):
        signer.check_request([*_conversation(foreign, _call("get_weather"))[:2], earlier[-1]], required=False)
    moved = _call("get_time", signer.sign(Kind.FUNCTION_CALL, "get_weather"))
    with pytest.raises(InvalidArgumentError, match="Thought signature is not valid"):
        signer.check_request(_conversation(moved, _call("get_weather")), required=True)


def test_streams_sign_the_first_call_or_end_text_with_a_signature(signer: ThoughtSigner) -> None:
    async def chunks(parts: list[list[gc.Part]]) -> AsyncIterator[gc.GenerateContentResponse]:
        for index, chunk_parts in enumerate(parts):
            finish = "STOP" if index == len(parts) - 1 else None
            content = gc.Content(role="model", parts=chunk_parts)
            yield gc.GenerateContentResponse(candidates=[gc.Candidate(index=0, content=content, finish_reason=finish)])

    async def signed(parts: list[list[gc.Part]]) -> list[gc.Part]:
        stage = signer.stage()
        signed = [out async for chunk in chunks(parts) for out in await stage.feed(chunk)]
        return [p for c in signed for p in c.candidates[0].content.parts]  # type: ignore[index, union-attr]

    calls = asyncio.run(signed([[gc.Part(text="Checking.")], [_call("a")], [_call("b")]]))
    assert calls[0].thought_signature is None
    assert signer.verify(calls[1].thought_signature or "", Kind.FUNCTION_CALL, "a")
    assert calls[2].thought_signature is None
    text = asyncio.run(signed([[gc.Part(text="Hello")], [gc.Part(text=" there")]]))
    assert text[-1].text == "" and signer.verify(text[-1].thought_signature or "", Kind.TEXT)
