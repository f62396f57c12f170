"""Cassettes on disk (the key, the file, its checks, upkeep), the record and replay backends over
scripted backends, how the registry builds them, and `openvertex cassettes`."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openvertex.backends.base import Backend, Capabilities
from openvertex.backends.fake import FakeBackend
from openvertex.backends.record import RecordingBackend
from openvertex.backends.registry import create_backends
from openvertex.backends.replay import ReplayBackend
from openvertex.cassettes import Cassettes, Chunk, DamagedCassette, Exchange, nearest, normalise, prune, seal
from openvertex.cli import main
from openvertex.errors import FailedPreconditionError, InvalidArgumentError, UnauthenticatedError, UnavailableError
from openvertex.http_clients import HttpClients
from openvertex.protocol import generate_content as gc
from openvertex.protocol.embeddings import EmbedRequest, EmbedText
from openvertex.service.embeddings import EmbeddingService
from openvertex.service.routing import Router
from openvertex.settings import FakeBackendSettings, RecordBackendSettings, ReplayBackendSettings

MODEL = "google/gemini-2.5-flash"
IMAGE = b"\x89PNG\r\n\x1a\n not really a picture \xff\xfe"


def _request(text: str, *, image: str | None = None, **config: int) -> gc.GenerateContentRequest:
    parts = [gc.Part(text=text)]
    if image is not None:
        parts.append(gc.Part(inline_data=gc.Blob(mime_type="image/png", data=image)))
    return gc.GenerateContentRequest(
        contents=[gc.Content(role="user", parts=parts)],
        generation_config=gc.GenerationConfig(**config) if config else None,
    )


def _answer(*texts: str) -> list[gc.GenerateContentResponse]:
    return [
        gc.GenerateContentResponse(
            candidates=[
                gc.Candidate(
                    index=0,
                    content=gc.Content(role="model", parts=[gc.Part(text=text)]),
                    finish_reason="STOP" if i == len(texts) - 1 else None,
                )
            ]
        )
        for i, text in enumerate(texts)
    ]


async def _collect(stream: AsyncIterator[gc.GenerateContentResponse]) -> list[gc.GenerateContentResponse]:
    return [chunk async for chunk in stream]


# ---------------------------------------------------------------------- the key


def test_the_key_covers_media_by_content_and_leaves_resource_names_out() -> None:
    standard = base64.b64encode(IMAGE).decode()
    urlsafe = base64.urlsafe_b64encode(IMAGE).decode().rstrip("=")
    one = normalise(_request("look", image=standard), MODEL)
    other = _request("look", image=urlsafe)
    other.model, other.cached_content = "projects/p/locations/l/publishers/google/models/x", "cachedContents/1"
    assert normalise(other, MODEL).digest == one.digest
    sha = next(iter(one.media))
    assert one.media == {sha: IMAGE}
    assert one.request["contents"][0]["parts"][1]["inlineData"] == {"mimeType": "image/png", "data": {"sha256": sha}}
    assert normalise(_request("look", image=base64.b64encode(IMAGE + b"!").decode()), MODEL).digest != one.digest
    assert normalise(_request("look", image=standard), "google/gemini-2.5-pro").digest != one.digest


def test_the_nearest_recording_names_the_first_difference(tmp_path: Path) -> None:
    shelf = Cassettes(tmp_path)
    for text, tokens in (("hello there", 10), ("something else entirely", 99)):
        key = normalise(_request(text, max_output_tokens=tokens), MODEL)
        shelf.write(_exchange(key.digest, key.request, _answer("hi")), key.media)
    difference = nearest(shelf, normalise(_request("hello there", max_output_tokens=11), MODEL))
    assert difference is not None
    assert (difference.path, difference.recorded, difference.requested) == (
        "generationConfig.maxOutputTokens",
        "10",
        "11",
    )
    assert nearest(shelf, normalise(_request("hello there"), "google/other")) is None


# ---------------------------------------------------------------------- the file


def _exchange(
    digest: str, request: dict[str, object], chunks: list[gc.GenerateContentResponse], *, at: float | None = None
) -> Exchange:
    return Exchange(
        digest=digest,
        model=MODEL,
        kind="stream",
        request=request,
        recorded_at=time.time() if at is None else at,
        elapsed_s=0.3,
        chunks=tuple(Chunk(0.1 * (i + 1), c.to_json_dict()) for i, c in enumerate(chunks)),
    )


def _written(tmp_path: Path) -> tuple[Cassettes, Path, str]:
    shelf = Cassettes(tmp_path)
    key = normalise(_request("a question", image=base64.b64encode(IMAGE).decode()), MODEL)
    path = shelf.write(_exchange(key.digest, key.request, _answer("an ", "answer")), key.media)
    return shelf, path, key.digest


def test_a_file_reads_back_as_written_and_leaves_no_scratch(tmp_path: Path) -> None:
    shelf, path, digest = _written(tmp_path)
    exchange = shelf.find(digest, "stream")
    assert exchange is not None and exchange.chunks is not None
    assert [c.offset_s for c in exchange.chunks] == pytest.approx([0.1, 0.2])
    assert exchange.first_chunk_s == pytest.approx(0.1)
    assert shelf.find(digest, "whole") is None
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted([path.name, *exchange_media(tmp_path)])


def exchange_media(directory: Path) -> list[str]:
    return [p.name for p in (directory / "media").iterdir()]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda text: text[: len(text) // 2], "not JSON"),
        (lambda text: text.replace('"format": 1', '"format": 9'), "format 9"),
        (lambda text: text.replace('"answer"', '"answer "', 1).replace("an ", "a ", 1), "checksum"),
        (lambda text: text.replace("answer", "cheat"), "checksum"),
    ],
)
def test_a_damaged_file_is_refused(tmp_path: Path, damage: object, reason: str) -> None:
    shelf, path, digest = _written(tmp_path)
    assert callable(damage)
    path.write_text(damage(path.read_text()))
    with pytest.raises(DamagedCassette, match=reason) as refused:
        shelf.find(digest, "stream")
    assert refused.value.path == path


def test_a_resealed_edit_of_the_request_is_refused(tmp_path: Path) -> None:
    shelf, path, digest = _written(tmp_path)
    data = json.loads(path.read_text())
    data.pop("checksum")
    data["request"]["contents"][0]["parts"][0]["text"] = "another question"
    path.write_bytes(seal(data))
    with pytest.raises(DamagedCassette, match="digest"):
        shelf.find(digest, "stream")
    path.rename(tmp_path / f"{'0' * 64}.stream.json")
    with pytest.raises(DamagedCassette):
        shelf.find("0" * 64, "stream")


# ---------------------------------------------------------------------- record and replay


def test_record_then_replay_whole_and_stream_each_way(tmp_path: Path) -> None:
    async def run() -> None:
        inner = FakeBackend([_answer("one ", "two"), _answer("three")])
        recorder = RecordingBackend(inner, Cassettes(tmp_path))
        streamed = await _collect(recorder.stream(_request("streamed"), model=MODEL))
        whole = await recorder.generate(_request("whole"), model=MODEL)
        replay = ReplayBackend(Cassettes(tmp_path))
        again = await _collect(replay.stream(_request("streamed"), model=MODEL))
        assert [c.to_json_dict()["candidates"] for c in again] == [c.to_json_dict()["candidates"] for c in streamed]
        assert len({c.response_id for c in again}) == 1 and again[0].create_time  # drawn from the recording
        merged = await replay.generate(_request("streamed"), model=MODEL)  # only streamed: its merge
        assert merged.candidates and merged.candidates[0].content
        assert [p.text for p in merged.candidates[0].content.parts] == ["one two"]
        one_chunk = await _collect(replay.stream(_request("whole"), model=MODEL))  # only whole: one chunk
        assert [c.candidates for c in one_chunk] == [whole.candidates]

    asyncio.run(run())


def test_refusals_are_recorded_and_transient_failures_are_not(tmp_path: Path) -> None:
    async def run() -> None:
        refusal = InvalidArgumentError("no such thing", param="contents")
        inner = FakeBackend([refusal, UnavailableError("busy"), [*_answer("cut "), UnavailableError("broke")]])
        recorder = RecordingBackend(inner, Cassettes(tmp_path))
        for text in ("refused", "busy", "cut"):
            with pytest.raises((InvalidArgumentError, UnavailableError)):
                await _collect(recorder.stream(_request(text), model=MODEL))
        assert len(Cassettes(tmp_path).files()) == 1
        replay = ReplayBackend(Cassettes(tmp_path), fallback=FakeBackend())
        with pytest.raises(InvalidArgumentError) as again:
            await replay.generate(_request("refused"), model=MODEL)
        assert again.value.message == refusal.message
        echoed = await replay.generate(_request("busy"), model=MODEL)  # not recorded: the fallback's
        assert echoed.candidates and echoed.candidates[0].content
        assert echoed.candidates[0].content.parts[0].text == "busy"

    asyncio.run(run())


def test_embeddings_are_the_fallbacks_when_it_embeds(tmp_path: Path) -> None:
    """Not recorded, embeddings go to the fallback: the replay embeds where its fallback does, so an
    embedding model routed to the replay is not refused as one that does not embed."""

    async def run() -> None:
        embedder = FakeBackend(capabilities=Capabilities(embeddings=True, embedding_dimensions=16))
        replay = ReplayBackend(Cassettes(tmp_path), fallback=embedder)
        service = EmbeddingService(Router(backends={"replay": replay}, routes=[]), timeout_s=5)
        model = service.resolve("google/text-embedding-005", replay)
        assert service.limits(model, "openai").dimensions == 16
        embedded = await service.embed(model, EmbedRequest((EmbedText(text="hello there"),)))
        assert len(embedded) == 1 and len(embedded[0].values) == 16
        assert not ReplayBackend(Cassettes(tmp_path), fallback=FakeBackend()).capabilities.embeddings

    asyncio.run(run())


def test_a_rejected_credential_is_not_recorded_over_the_answer(tmp_path: Path) -> None:
    """A 401 is about the recorder's credentials, not the request: it would come again only with
    them, so it is not recorded (it would replace a good recording and answer every replay)."""

    async def run() -> None:
        inner = FakeBackend([_answer("fine"), UnauthenticatedError("Request had invalid authentication credentials.")])
        recorder = RecordingBackend(inner, Cassettes(tmp_path))
        await recorder.generate(_request("asked twice"), model=MODEL)
        with pytest.raises(UnauthenticatedError):
            await recorder.generate(_request("asked twice"), model=MODEL)
        replayed = await ReplayBackend(Cassettes(tmp_path)).generate(_request("asked twice"), model=MODEL)
        assert replayed.candidates and replayed.candidates[0].content
        assert replayed.candidates[0].content.parts[0].text == "fine"

    asyncio.run(run())


def test_no_recording_and_no_fallback_is_a_failed_precondition(tmp_path: Path) -> None:
    async def run() -> None:
        replay = ReplayBackend(Cassettes(tmp_path))
        with pytest.raises(FailedPreconditionError, match="nor of any request to this model"):
            await replay.generate(_request("hi"), model=MODEL)
        with pytest.raises(FailedPreconditionError, match="computeTokens is not recorded"):
            await replay.compute_tokens(_request("hi"), model=MODEL)

    asyncio.run(run())


# ---------------------------------------------------------------------- the registry


def _build(tmp_path: Path, **configured: object) -> dict[str, Backend]:
    return create_backends(configured, tmp_path, HttpClients())  # type: ignore[arg-type]


def test_wrappers_are_built_after_what_they_name_in_configuration_order(tmp_path: Path) -> None:
    built = _build(
        tmp_path,
        rec=RecordBackendSettings(type="record", backend="fake", cassettes=tmp_path),
        replay=ReplayBackendSettings(type="replay", cassettes=tmp_path, fallback="rec"),
        fake=FakeBackendSettings(type="fake"),
    )
    assert list(built) == ["rec", "replay", "fake"]
    assert isinstance(built["rec"], RecordingBackend) and built["rec"].inner is built["fake"]
    assert isinstance(built["replay"], ReplayBackend) and built["replay"].fallback is built["rec"]


@pytest.mark.parametrize(
    ("configured", "message"),
    [
        ({"rec": {"backend": "rec"}}, "backends.rec: the backends name each other in a loop: rec → rec"),
        ({"rec": {"backend": "gone"}}, "backends.rec: 'gone' is not a configured backend"),
        ({"a": {"backend": "b"}, "b": {"backend": "a"}}, "a → b → a"),
    ],
)
def test_a_record_backend_naming_itself_or_nothing_is_refused(
    tmp_path: Path, configured: dict[str, dict[str, str]], message: str
) -> None:
    settings = {
        name: RecordBackendSettings(type="record", cassettes=tmp_path, **fields) for name, fields in configured.items()
    }
    with pytest.raises(ValueError, match=message):
        _build(tmp_path, **settings)


def test_a_replay_of_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a directory"):
        _build(tmp_path, replay=ReplayBackendSettings(type="replay", cassettes=tmp_path / "none"))


# ---------------------------------------------------------------------- openvertex cassettes


def test_cli_lists_shows_and_prunes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shelf, path, digest = _written(tmp_path)
    old = normalise(_request("an old question"), MODEL)
    shelf.write(_exchange(old.digest, old.request, _answer("old")), {})
    old_path = shelf.path(old.digest, "stream")
    data = json.loads(old_path.read_text())
    data.pop("checksum")
    data["recorded_at"] = "2020-01-01T00:00:00.000000Z"
    old_path.write_bytes(seal(data))
    (tmp_path / f"{'f' * 64}.whole.json").write_text("{")
    (tmp_path / "media" / ("0" * 64)).write_bytes(b"unused")

    main(["cassettes", "list", str(tmp_path)])
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split("\t") == ["digest", "model", "kind", "chunks", "recorded", "first user text"]
    assert f"{digest}\t{MODEL}\tstream\t2\t" in "\n".join(listed)
    assert any(line.endswith("\tan old question") and "2020-01-01" in line for line in listed)
    assert any(line.startswith(f"{'f' * 64}.whole.json\t-\tdamaged") for line in listed)

    main(["cassettes", "show", digest[:10], "--dir", str(tmp_path)])
    shown = json.loads(capsys.readouterr().out)
    assert shown["digest"] == digest and len(shown["answer"]["chunks"]) == 2

    main(["cassettes", "prune", str(tmp_path), "--older-than", "30", "--unused-media"])
    pruned = capsys.readouterr().out
    assert f"removed {old_path}" in pruned and "0" * 64 in pruned and "2 file(s) removed" in pruned
    assert path.exists() and (tmp_path / "media").iterdir()
    assert len(list((tmp_path / "media").iterdir())) == 1  # the question's picture is still named
    with pytest.raises(SystemExit, match="say what to prune"):
        main(["cassettes", "prune", str(tmp_path)])
    with pytest.raises(SystemExit, match="no recorded exchange"):
        main(["cassettes", "show", "abc", "--dir", str(tmp_path)])


def test_pruning_media_removes_only_what_a_recording_wrote(tmp_path: Path) -> None:
    """`media/` may be a link to a folder shared with other things, and hold a .gitkeep or a write
    under way: only the unused media a record backend writes (`media/<sha256>`) are removed."""
    shared = tmp_path / "shared"
    shared.mkdir()
    kept = [shared / "notes.txt", shared / ".gitkeep", shared / f".{'1' * 64}.123.abcd.tmp"]
    for path in kept:
        path.write_text("not a recording's")
    (shared / ("0" * 64)).write_bytes(b"an unused medium")
    shelf = Cassettes(tmp_path / "cassettes")
    shelf.directory.mkdir()
    (shelf.directory / "media").symlink_to(shared)
    removed = prune(shelf, older_than_s=None, unused_media=True, at=time.time())
    assert [path.name for path in removed] == ["0" * 64]
    assert all(path.exists() for path in kept)


def test_cli_prunes_nothing_by_a_negative_age_and_shows_a_damaged_file_as_damaged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path, digest = _written(tmp_path)
    for days in ("-1", "nan", "inf"):  # recorded in the future: it would have removed every file
        with pytest.raises(SystemExit):
            main(["cassettes", "prune", str(tmp_path), "--older-than", days])
    assert path.exists()
    path.write_text("{")
    with pytest.raises(SystemExit, match="damaged: not JSON"):
        main(["cassettes", "show", digest[:8], "--dir", str(tmp_path)])
