"""Images through a vision projector on the embedded engine, end to end: a tiny mmproj written
by the test (tests/support/projector.py) is loaded by llama.cpp's multimodal library next to
SmolLM2, images are encoded by it and their embeddings decoded into the engine's KV. Its weights
are random, so the answers mean nothing; what is checked is the plumbing: the image reaches the
model as embeddings (another image changes the answer's numbers, the same one does not), its
tokens are counted, reused from the KV like text, and OCR is not involved."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import httpx
import pytest
from PIL import Image

from openvertex.backends.local import vision
from openvertex.backends.local.model import resolve_model_path
from openvertex.settings import LocalBackendSettings, Settings
from tests.support.projector import IMAGE_TOKENS, write_tiny_projector
from tests.support.server import RunningServer, serve

AUTH = {"Authorization": "Bearer test"}
MODEL = "gemini-2.5-flash"  # google/* routes to the embedded model
NATIVE = f"/v1beta1/projects/p/locations/l/publishers/google/models/{MODEL}"


def _text_n_embd() -> int:
    reader = gguf.GGUFReader(resolve_model_path(LocalBackendSettings().model))
    field = reader.fields["llama.embedding_length"]
    return int(field.parts[field.data[0]][0])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    work = tmp_path_factory.mktemp("vision")
    projector = write_tiny_projector(work / "mmproj.gguf", text_n_embd=_text_n_embd())
    local = LocalBackendSettings(
        mmproj=str(projector), n_parallel=2, n_ctx=2048, min_cached_content_tokens=16, min_implicit_cache_tokens=0
    )
    with serve(Settings(port=0, state_dir=work / "state", backends={"local": local})) as running:
        yield running


def _png(color: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _ask(server: RunningServer, png: bytes, **extra: object) -> httpx.Response:
    content = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": _data_uri(png)}},
    ]
    body = {
        "model": f"google/{MODEL}",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": True,
        **extra,
    }
    return httpx.post(server.chat_url, json=body, headers=AUTH, timeout=120)


def _first_logprob(response: httpx.Response) -> float:
    assert response.status_code == 200, response.text
    return float(response.json()["choices"][0]["logprobs"]["content"][0]["logprob"])


def test_the_image_reaches_the_model_as_embeddings(server: RunningServer) -> None:
    red, blue = _png((220, 20, 20)), _png((20, 20, 220))
    first, again, other = _ask(server, red), _ask(server, red), _ask(server, blue)
    # The same image, the same numbers; another image, other numbers (the text is the same).
    assert _first_logprob(first) == pytest.approx(_first_logprob(again), abs=1e-3)
    assert _first_logprob(other) != pytest.approx(_first_logprob(first), abs=1e-3)
    usage, repeated, changed = (r.json()["usage"] for r in (first, again, other))
    assert usage["prompt_tokens"] == changed["prompt_tokens"]
    # Asked again, the whole prompt but its last token comes from the KV, the image included;
    # another image reuses the text before it and no more.
    assert repeated["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1
    assert changed["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens"] - IMAGE_TOKENS


class _Forged:
    """hashlib as vision.py sees it, but for the images given the SHA-256 digests given: two
    images whose digests share their first 40 bits (about 2^40 work to find; here made up)."""

    def __init__(self, digests: dict[bytes, bytes]) -> None:
        self._digests = digests

    def sha256(self, data: bytes = b"") -> Any:
        forged = self._digests.get(data)
        return _Digest(forged) if forged is not None else hashlib.sha256(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(hashlib, name)


class _Digest:
    def __init__(self, digest: bytes) -> None:
        self._digest = digest

    def digest(self) -> bytes:
        return self._digest


def test_an_image_whose_hash_shares_a_prefix_with_another_takes_nothing_of_it(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim, forged = _png((250, 120, 30)), _png((30, 120, 250))
    real = hashlib.sha256(victim).digest()
    # The same first 40 bits (and more), another image from there on.
    monkeypatch.setattr(vision, "hashlib", _Forged({forged: real[:8] + bytes(b ^ 0xFF for b in real[8:])}))
    seen = _ask(server, victim)
    taken = _ask(server, forged)
    assert _first_logprob(taken) != pytest.approx(_first_logprob(seen), abs=1e-3)  # its own embeddings
    usage, other = seen.json()["usage"], taken.json()["usage"]
    assert other["prompt_tokens"] == usage["prompt_tokens"]
    # Only the text before the image comes from the victim's KV, none of the image.
    assert other["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens"] - IMAGE_TOKENS


def test_an_image_costs_its_projectors_tokens_and_no_ocr(server: RunningServer) -> None:
    png = base64.b64encode(_png((10, 200, 10))).decode()
    parts = [{"text": "Describe it."}, {"inlineData": {"mimeType": "image/png", "data": png}}]
    body = {"contents": [{"role": "user", "parts": parts}]}
    counted = httpx.post(f"{server.url}{NATIVE}:countTokens", json=body, headers=AUTH, timeout=120)
    computed = httpx.post(f"{server.url}{NATIVE}:computeTokens", json=body, headers=AUTH, timeout=120)
    answered = httpx.post(
        f"{server.url}{NATIVE}:generateContent",
        json={**body, "generationConfig": {"maxOutputTokens": 2}},
        headers=AUTH,
        timeout=120,
    )
    assert counted.status_code == computed.status_code == answered.status_code == 200, answered.text
    total = counted.json()["totalTokens"]
    assert answered.json()["usageMetadata"]["promptTokenCount"] == total
    tokens = [base64.b64decode(t) for info in computed.json()["tokensInfo"] for t in info["tokens"]]
    assert len(tokens) == total
    assert tokens.count(b"") == IMAGE_TOKENS  # the image's positions: embeddings, no text
    prompt = b"".join(tokens).decode()
    assert "Describe it." in prompt and "[An image" not in prompt  # seen, not read by OCR


def test_a_context_cache_holding_an_image(server: RunningServer) -> None:
    png = base64.b64encode(_png((90, 10, 160))).decode()
    parts = [{"text": "Here is a picture."}, {"inlineData": {"mimeType": "image/png", "data": png}}]
    created = httpx.post(
        f"{server.url}/v1beta1/projects/p/locations/l/cachedContents",
        json={
            "model": f"projects/p/locations/l/publishers/google/models/{MODEL}",
            "contents": [{"role": "user", "parts": parts}],
        },
        headers=AUTH,
        timeout=120,
    )
    assert created.status_code == 200, created.text
    cache = created.json()
    assert cache["usageMetadata"]["totalTokenCount"] > IMAGE_TOKENS
    body = {
        "cachedContent": cache["name"],
        "contents": [{"role": "user", "parts": [{"text": "What colour is it?"}]}],
        "generationConfig": {"maxOutputTokens": 2},
    }
    answered = httpx.post(f"{server.url}{NATIVE}:generateContent", json=body, headers=AUTH, timeout=120)
    assert answered.status_code == 200, answered.text
    usage = answered.json()["usageMetadata"]
    assert usage["cachedContentTokenCount"] == cache["usageMetadata"]["totalTokenCount"]


def test_a_stream_with_an_image(server: RunningServer) -> None:
    with httpx.stream(
        "POST",
        server.chat_url,
        json={
            "model": f"google/{MODEL}",
            "stream": True,
            "max_tokens": 4,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": _data_uri(_png((0, 0, 0)))}}],
                }
            ],
        },
        headers=AUTH,
        timeout=120,
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert '"usage"' in lines[-2]


def test_two_images_and_a_conversation(server: RunningServer) -> None:
    images = [{"type": "image_url", "image_url": {"url": _data_uri(_png(c))}} for c in ((1, 2, 3), (200, 200, 0))]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Compare."}, *images]},
        {"role": "assistant", "content": "They differ."},
        {"role": "user", "content": [{"type": "text", "text": "And this one?"}, images[0]]},
    ]
    body = {"model": f"google/{MODEL}", "messages": messages, "max_tokens": 3}
    response = httpx.post(server.chat_url, json=body, headers=AUTH, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] > 3 * IMAGE_TOKENS


def test_the_same_image_twice_in_a_row(server: RunningServer) -> None:
    # Back to back, its two runs of placeholders touch: each is decoded from its own first row.
    image = {"type": "image_url", "image_url": {"url": _data_uri(_png((60, 70, 80)))}}
    body = {
        "model": f"google/{MODEL}",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Same?"}, image, image]}],
        "max_tokens": 3,
    }
    response = httpx.post(server.chat_url, json=body, headers=AUTH, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] > 2 * IMAGE_TOKENS


def test_a_file_that_is_not_one_of_geminis_image_types_is_a_400(server: RunningServer) -> None:
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")  # Pillow reads GIFs; the projector is never given one
    response = _ask(server, gif.getvalue())  # declared image/png
    assert response.status_code == 400, response.text
    assert "messages[0].content[1].image_url" in response.json()[0]["error"]["message"]


def test_an_image_too_large_or_broken_is_a_400_naming_the_part(server: RunningServer) -> None:
    huge = io.BytesIO()
    Image.new("1", (8000, 6000)).save(huge, "PNG")  # 48 megapixels, a few kilobytes
    response = _ask(server, huge.getvalue())
    assert response.status_code == 400
    error = response.json()[0]["error"]
    assert "8000×6000 pixels" in error["message"]
    assert "messages[0].content[1].image_url" in error["message"]
    truncated = _png((5, 5, 5))[:60]  # a PNG signature, then nothing a decoder can use
    response = _ask(server, truncated)
    assert response.status_code == 400, response.text
    assert "could not be decoded" in response.json()[0]["error"]["message"]
    assert _ask(server, _png((9, 9, 9))).status_code == 200  # and the server goes on


def test_a_missing_projector_is_refused_at_start(tmp_path: Path) -> None:
    from openvertex.backends.local.backend import LocalBackend

    with pytest.raises(FileNotFoundError, match="mmproj"):
        LocalBackend(LocalBackendSettings(mmproj=str(tmp_path / "absent.gguf")))
