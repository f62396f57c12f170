"""Golden translation tests: tests/golden/<direction>/<case>/{input,expected}.json.

Outputs are also validated by the SDKs' own types as oracles: google-genai for the Gemini
side, openai for the OpenAI side. `pytest --update-golden` rewrites the expectations.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import openai.types.chat as openai_types
import pytest
from google.genai import types as genai_types

from openvertex.protocol import chat_completions as oa
from openvertex.protocol import generate_content as gc
from openvertex.translate.context import ResponseContext
from openvertex.translate.request import chat_request_to_generate_content
from openvertex.translate.response import generate_content_to_completion
from openvertex.translate.stream import ChunkTranslator

GOLDEN = Path(__file__).parent.parent / "golden"


def _cases(direction: str) -> list[Path]:
    return sorted(p for p in (GOLDEN / direction).iterdir() if p.is_dir())


def _check(case: Path, actual: Any, update: bool) -> None:
    expected_file = case / "expected.json"
    if update:
        expected_file.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n")
    assert actual == json.loads(expected_file.read_text())


def _context(case: Path) -> ResponseContext:
    options = json.loads((case / "context.json").read_text()) if (case / "context.json").exists() else {}
    counter = itertools.count(1)
    return ResponseContext(
        model=options.get("model", "google/gemini-2.5-flash"),
        response_id="golden-response-id",
        created=1770850461,
        tool_call_id=lambda: f"function-call-{next(counter):08d}",
        thought_marker=options.get("thought_marker"),
    )


def _validate_gemini_request(request: dict[str, Any]) -> None:
    for content in request["contents"]:
        genai_types.Content.model_validate(content)
    if "systemInstruction" in request:
        genai_types.Content.model_validate(request["systemInstruction"])
    for tool in request.get("tools", []):
        genai_types.Tool.model_validate(tool)
    if "toolConfig" in request:
        genai_types.ToolConfig.model_validate(request["toolConfig"])
    for setting in request.get("safetySettings", []):
        genai_types.SafetySetting.model_validate(setting)
    if "generationConfig" in request:
        genai_types.GenerationConfig.model_validate(request["generationConfig"])


def _without_image_audio(completion: dict[str, Any]) -> dict[str, Any]:
    """Vertex returns images in `message.audio` without OpenAI's id/expires_at/transcript
    (spec §4.1, documented sample); the openai oracle checks everything else."""
    copy = json.loads(json.dumps(completion))
    for choice in copy["choices"]:
        choice["message"].pop("audio", None)
    return copy


@pytest.mark.parametrize("case", _cases("openai_to_gemini"), ids=lambda p: p.name)
def test_request(case: Path, request: pytest.FixtureRequest) -> None:
    body = oa.ChatCompletionRequest.model_validate_json((case / "input.json").read_text())
    actual = chat_request_to_generate_content(body).to_json_dict()
    _validate_gemini_request(actual)
    _check(case, actual, request.config.getoption("--update-golden"))


@pytest.mark.parametrize("case", _cases("gemini_to_openai"), ids=lambda p: p.name)
def test_response(case: Path, request: pytest.FixtureRequest) -> None:
    raw = json.loads((case / "input.json").read_text())
    genai_types.GenerateContentResponse.model_validate(raw)
    completion = generate_content_to_completion(gc.GenerateContentResponse.model_validate(raw), _context(case))
    actual = json.loads(completion.model_dump_json())
    openai_types.ChatCompletion.model_validate(_without_image_audio(actual))
    _check(case, actual, request.config.getoption("--update-golden"))


@pytest.mark.parametrize("case", _cases("gemini_stream_to_openai"), ids=lambda p: p.name)
def test_stream(case: Path, request: pytest.FixtureRequest) -> None:
    raw_chunks = json.loads((case / "input.json").read_text())
    options = json.loads((case / "context.json").read_text()) if (case / "context.json").exists() else {}
    translator = ChunkTranslator(_context(case), candidate_count=options.get("candidate_count", 1))
    actual = []
    for raw in raw_chunks:
        genai_types.GenerateContentResponse.model_validate(raw)
        actual += [
            json.loads(c.model_dump_json()) for c in translator.feed(gc.GenerateContentResponse.model_validate(raw))
        ]
    actual += [json.loads(c.model_dump_json()) for c in translator.finish()]
    for chunk in actual:
        openai_types.ChatCompletionChunk.model_validate(chunk)
    _check(case, actual, request.config.getoption("--update-golden"))
