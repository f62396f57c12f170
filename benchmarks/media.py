"""Media on the embedded model: time to first token for a request with one image (the OCR path) and
with one 20-second audio clip (transcription), cold and warm, and the resident memory the media
models add.

Runs openvertex in its own process. Each measurement is a streamGenerateContent (alt=sse) whose time
to first token is read at the first event that carries text; the baseline is the same question
without media. "cold" is the first request of its kind after start (the recogniser loads), "warm"
the median of the next ones, each with media never seen before (openvertex remembers what it
read, so a repeat would cost nothing). Memory is the server's VmRSS before any media and after both
kinds. The image is text rendered with Pillow; the clip is the tests' spoken sentence repeated to
20 s.

    .venv/bin/python benchmarks/media.py [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import httpx
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "tests" / "data" / "meeting.mp3"
URL = "/v1beta1/projects/bench/locations/us-central1/publishers/google/models/gemini-2.5-flash"
HEADERS = {"authorization": "Bearer bench"}
QUESTION = {"text": "Summarise what you were given in one sentence."}


@contextmanager
def server(state_dir: Path) -> Iterator[tuple[str, int]]:
    config = state_dir / "openvertex.toml"
    config.write_text(f'state_dir = "{state_dir}"\n[backends.local]\ntype = "local"\nn_parallel = 2\n')
    command = [sys.executable, "-m", "openvertex", "serve", "--port", "0", "--config", str(config)]
    process = subprocess.Popen([*command, "--log-level", "warning"], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    base = process.stdout.readline().split()[-1]
    try:
        while httpx.get(f"{base}/readyz").status_code != 200:
            time.sleep(0.05)
        yield base, process.pid
    finally:
        process.terminate()
        process.wait(timeout=60)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def image(text: str) -> dict[str, Any]:
    picture = Image.new("RGB", (800, 200), "white")
    ImageDraw.Draw(picture).text((24, 60), text, fill="black", font=ImageFont.load_default(size=48))
    out = io.BytesIO()
    picture.save(out, "PNG")
    return {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(out.getvalue()).decode()}}


def clip(seconds: float, variant: int) -> dict[str, Any]:
    """The spoken sentence repeated to `seconds`, with `variant` samples of silence in front (new bytes)."""
    pcm = bytearray()
    with av.open(str(CLIP)) as source:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        for frame in source.decode(audio=0):
            for converted in resampler.resample(frame):
                pcm += converted.to_ndarray().tobytes()
    target = int(seconds * 16000) * 2
    body = bytes(2 * variant) + bytes(pcm) * (target // len(pcm) + 1)
    out = io.BytesIO()
    with wave.open(out, "wb") as written:
        written.setnchannels(1)
        written.setsampwidth(2)
        written.setframerate(16000)
        written.writeframes(body[:target])
    return {"inlineData": {"mimeType": "audio/wav", "data": base64.b64encode(out.getvalue()).decode()}}


def first_token_s(base: str, parts: list[dict[str, Any]]) -> float:
    body = {"contents": [{"role": "user", "parts": parts}], "generationConfig": {"maxOutputTokens": 4}}
    started = time.perf_counter()
    with httpx.stream(
        "POST", f"{base}{URL}:streamGenerateContent", params={"alt": "sse"}, json=body, headers=HEADERS, timeout=600
    ) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if line.startswith("data: ") and '"text"' in line:
                return time.perf_counter() - started
    raise RuntimeError("no text in the answer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "media.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state, server(Path(state)) as (base, pid):
        first_token_s(base, [QUESTION])  # the model's own warm-up
        text_only = statistics.median(first_token_s(base, [QUESTION]) for _ in range(args.repeats))
        rss_before = rss_mib(pid)
        image_cold = first_token_s(base, [QUESTION, image("INVOICE 1000 PAID")])
        image_warm = statistics.median(
            first_token_s(base, [QUESTION, image(f"INVOICE {1001 + i} PAID")]) for i in range(args.repeats)
        )
        rss_image = rss_mib(pid)
        audio_cold = first_token_s(base, [QUESTION, clip(20, 0)])
        audio_warm = statistics.median(first_token_s(base, [QUESTION, clip(20, 1 + i)]) for i in range(args.repeats))
        rss_after = rss_mib(pid)
    figures = {
        "text_only_first_token_s": round(text_only, 3),
        "image_ocr_first_token_s": {"cold": round(image_cold, 3), "warm": round(image_warm, 3)},
        "audio_20s_first_token_s": {"cold": round(audio_cold, 3), "warm": round(audio_warm, 3)},
        "rss_mib": {
            "before_media": round(rss_before),
            "after_ocr": round(rss_image),
            "after_ocr_and_whisper": round(rss_after),
            "added_by_ocr": round(rss_image - rss_before),
            "added_by_whisper": round(rss_after - rss_image),
        },
        "repeats": args.repeats,
    }
    print(f"first token, text only:          {text_only:7.3f} s")
    print(f"first token, one image (OCR):    {image_cold:7.3f} s cold, {image_warm:7.3f} s warm")
    print(f"first token, 20 s audio clip:    {audio_cold:7.3f} s cold, {audio_warm:7.3f} s warm")
    print(f"resident memory: {rss_before:.0f} MiB before media, +{rss_image - rss_before:.0f} MiB OCR, ", end="")
    print(f"+{rss_after - rss_image:.0f} MiB Whisper")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
