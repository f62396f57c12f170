"""Media on the embedded text model, end to end: the seeds' `gs://cloud-samples-data/…` image read
from a real GCS emulator on loopback, an image's text read by OCR and a PDF's text reaching the
prompt (computeTokens shows what the model reads), and the model answering from them."""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import pytest
from gcp_storage_emulator.server import create_server
from google.cloud import storage
from PIL import Image

from openvertex.settings import MediaSettings, Settings
from tests.support.media import text_pdf, text_png
from tests.support.server import RunningServer, serve

AUTH = {"Authorization": "Bearer test"}
MODEL = "gemini-2.5-flash"  # google/* routes to the embedded model by default
NATIVE = f"/v1beta1/projects/p/locations/l/publishers/google/models/{MODEL}"
SCONES = "generative-ai/image/scones.jpg"
PAIN = "generative-ai/audio/pixel.mp3"
# Speech made with espeak-ng ("Hello. The meeting starts at nine o'clock in room twelve."), 4.6 s.
MEETING = (Path(__file__).parent.parent / "data" / "meeting.mp3").read_bytes()


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    """A GCS emulator holding the seeds' image path, with text in it the test put there."""
    server = create_server("127.0.0.1", 0, in_memory=True)
    server.start()
    host = f"http://127.0.0.1:{server._api._httpd.server_port}"  # the emulator's own attribute: it binds port 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", host)
        client = storage.Client.create_anonymous_client()
        client.project = "test"
        bucket = client.create_bucket("cloud-samples-data")
        bucket.blob(SCONES).upload_from_string(_as_jpeg(text_png("SCONES 7 EUROS")), content_type="image/jpeg")
        bucket.blob(PAIN).upload_from_string(MEETING, content_type="audio/mpeg")
        yield host
    server.stop()


def _as_jpeg(png: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(out, "JPEG", quality=95)
    return out.getvalue()


@pytest.fixture(scope="module")
def server(emulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    media = MediaSettings(allowed_buckets=["cloud-samples-data"])
    with serve(Settings(port=0, state_dir=tmp_path_factory.mktemp("state"), media=media)) as running:
        yield running


def _prompt_text(server: RunningServer, parts: list[dict[str, object]]) -> str:
    """The prompt as the model reads it, from computeTokens' token pieces."""
    body = {"contents": [{"role": "user", "parts": parts}]}
    response = httpx.post(f"{server.url}{NATIVE}:computeTokens", json=body, headers=AUTH, timeout=120)
    assert response.status_code == 200, response.text
    pieces = [base64.b64decode(token) for info in response.json()["tokensInfo"] for token in info["tokens"]]
    return b"".join(pieces).decode(errors="replace")


def test_the_seeds_gs_image_is_read_from_the_emulator_by_ocr(server: RunningServer) -> None:
    image = {"type": "image_url", "image_url": f"gs://cloud-samples-data/{SCONES}"}
    question = {"type": "text", "text": "What price is written in the image? Answer with the number only."}
    body = {"model": f"google/{MODEL}", "messages": [{"role": "user", "content": [question, image]}], "max_tokens": 12}
    response = httpx.post(server.chat_url, json={**body, "temperature": 0}, headers=AUTH, timeout=120)
    assert response.status_code == 200, response.text
    assert "7" in response.json()["choices"][0]["message"]["content"]
    part = {"fileData": {"mimeType": "image/jpeg", "fileUri": f"gs://cloud-samples-data/{SCONES}"}}
    prompt = _prompt_text(server, [{"text": "Look."}, part])
    assert "An image (image/jpeg, 720×160 pixels)" in prompt
    assert "SCONES" in prompt and "EUROS" in prompt  # OCR may split the line into boxes


def test_a_missing_gs_object_is_a_400_naming_the_part(server: RunningServer) -> None:
    image = {"type": "image_url", "image_url": "gs://cloud-samples-data/generative-ai/image/none.jpg"}
    body = {"model": f"google/{MODEL}", "messages": [{"role": "user", "content": [image]}]}
    response = httpx.post(server.chat_url, json=body, headers=AUTH, timeout=60)
    assert response.status_code == 400
    assert response.json()[0]["error"]["message"] == (
        "messages[0].content[0].image_url: gs://cloud-samples-data/generative-ai/image/none.jpg does not exist"
    )


def test_an_inline_image_and_a_pdf_reach_the_prompt_as_text(server: RunningServer) -> None:
    png = base64.b64encode(text_png("BLUE HORSE 19")).decode()
    pdf = base64.b64encode(text_pdf(["Invoice number 5521.", "Total due: 88 pounds."])).decode()
    prompt = _prompt_text(
        server,
        [
            {"text": "Read these."},
            {"inlineData": {"mimeType": "image/png", "data": png}},
            {"inlineData": {"mimeType": "application/pdf", "data": pdf}},
        ],
    )
    assert "BLUE HORSE 19" in prompt
    assert "A PDF document of 2 pages" in prompt and "Invoice number 5521." in prompt and "88 pounds" in prompt
    assert "This model cannot see images" in prompt  # labelled as what it is


def test_an_image_with_no_text_says_so_and_a_broken_one_is_a_400(server: RunningServer) -> None:
    blank = base64.b64encode(text_png("")).decode()
    assert "OCR found no text in this one" in _prompt_text(
        server, [{"inlineData": {"mimeType": "image/png", "data": blank}}]
    )
    broken = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()
    body = {"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": broken}}]}]}
    response = httpx.post(f"{server.url}{NATIVE}:generateContent", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 400
    assert "image could not be decoded" in response.json()["error"]["message"]


def test_video_is_a_clear_400_on_the_text_model(server: RunningServer) -> None:
    video = {"type": "image_url", "image_url": "gs://cloud-samples-data/video/animals.mp4"}
    body = {"model": f"google/{MODEL}", "messages": [{"role": "user", "content": [video]}]}
    response = httpx.post(server.chat_url, json=body, headers=AUTH, timeout=60)
    assert response.status_code == 400
    assert "video/mp4 input is not supported" in response.json()[0]["error"]["message"]


def _transcoded(container: str, codec: str) -> bytes:
    """The meeting clip in another container, made here with PyAV (wav through the wave module)."""
    samples = bytearray()
    with av.open(io.BytesIO(MEETING)) as source:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        for frame in source.decode(audio=0):
            for converted in resampler.resample(frame):
                samples += converted.to_ndarray().tobytes()
    out = io.BytesIO()
    if container == "wav":
        with wave.open(out, "wb") as written:
            written.setnchannels(1)
            written.setsampwidth(2)
            written.setframerate(16000)
            written.writeframes(bytes(samples))
        return out.getvalue()
    with av.open(io.BytesIO(MEETING)) as source, av.open(out, "w", format=container) as sink:
        stream = sink.add_stream(codec, rate=16000)
        stream.layout = "mono"
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=16000)
        for frame in source.decode(audio=0):
            for converted in resampler.resample(frame):
                for packet in stream.encode(converted):
                    sink.mux(packet)
        for packet in stream.encode(None):
            sink.mux(packet)
    return out.getvalue()


def test_the_seeds_gs_audio_is_transcribed_into_the_prompt(server: RunningServer) -> None:
    audio = {"type": "input_audio", "input_audio": {"data": f"gs://cloud-samples-data/{PAIN}", "format": "audio/mp3"}}
    question = {"type": "text", "text": "At what time does the meeting start?"}
    body = {"model": f"google/{MODEL}", "messages": [{"role": "user", "content": [question, audio]}], "max_tokens": 12}
    response = httpx.post(server.chat_url, json={**body, "temperature": 0}, headers=AUTH, timeout=120)
    assert response.status_code == 200, response.text
    part = {"fileData": {"mimeType": "audio/mpeg", "fileUri": f"gs://cloud-samples-data/{PAIN}"}}
    prompt = _prompt_text(server, [{"text": "Listen."}, part])
    assert "An audio clip (audio/mpeg, 4.6 s). This model cannot hear audio; its speech, transcribed:" in prompt
    assert "Hello, the meeting starts at 9 o'clock in room 12." in prompt


@pytest.mark.parametrize(("mime", "container", "codec"), [("audio/wav", "wav", ""), ("audio/flac", "flac", "flac")])
def test_audio_in_other_containers_reaches_the_prompt_as_its_transcript(
    server: RunningServer, mime: str, container: str, codec: str
) -> None:
    clip = base64.b64encode(_transcoded(container, codec)).decode()
    prompt = _prompt_text(server, [{"inlineData": {"mimeType": mime, "data": clip}}])
    assert f"An audio clip ({mime}, 4.6 s). This model cannot hear audio" in prompt
    assert "meeting starts at 9" in prompt and "room 12" in prompt


def test_an_openai_input_audio_clip_and_a_broken_one(server: RunningServer) -> None:
    clip = {"type": "input_audio", "input_audio": {"data": base64.b64encode(MEETING).decode(), "format": "mp3"}}
    body = {"model": f"google/{MODEL}", "messages": [{"role": "user", "content": [clip]}], "max_tokens": 4}
    assert httpx.post(server.chat_url, json=body, headers=AUTH, timeout=120).status_code == 200
    broken = base64.b64encode(b"RIFF\0\0\0\0WAVE" + bytes(64)).decode()
    body["messages"] = [
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": broken, "format": "wav"}}]}
    ]
    response = httpx.post(server.chat_url, json=body, headers=AUTH, timeout=120)
    assert response.status_code == 400
    assert "audio could not be decoded" in response.json()[0]["error"]["message"]
