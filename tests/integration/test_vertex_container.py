"""openvertex as a Vertex AI custom prediction container: the port and routes Vertex sets in the
environment (AIP_HTTP_PORT, AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE), the health route, `predict`'s
instances/predictions envelope, and `rawPredict`'s chat request passed as it is."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import httpx
import pytest

from openvertex.backends.fake import FakeBackend
from openvertex.cli import _serve_settings
from openvertex.settings import Settings
from tests.support.server import RunningServer, serve

HEALTH = "/v1/endpoints/123/deployedModels/456"
PREDICT = "/v1/endpoints/123/deployedModels/456:predict"


@pytest.fixture
def container(fake: FakeBackend) -> Iterator[RunningServer]:
    settings = Settings(port=0, health_route=HEALTH, predict_route=PREDICT, predict_model="google/gemini-2.5-flash")
    with serve(settings, backends={"local": fake}) as server:
        yield server


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_the_health_route_answers_when_ready(container: RunningServer) -> None:
    assert httpx.get(container.url + HEALTH).status_code == 200


def test_predict_answers_each_instance(container: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIP_DEPLOYED_MODEL_ID", "456")
    instances = [
        {"@requestFormat": "chatCompletions", "messages": _user("first question")},
        {"model": "google/gemini-2.5-flash", "messages": _user("second question"), "max_tokens": 5},
    ]
    response = httpx.post(container.url + PREDICT, json={"instances": instances}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["deployedModelId"] == "456"
    answers = [p["choices"][0]["message"]["content"] for p in body["predictions"]]
    assert answers == ["first question", "second question"]  # the fake echoes
    assert all(p["object"] == "chat.completion" for p in body["predictions"])


def test_raw_predict_takes_a_chat_request_as_it_is(container: RunningServer) -> None:
    answered = httpx.post(container.url + PREDICT, json={"messages": _user("raw")}, timeout=30)
    assert answered.status_code == 200 and answered.json()["choices"][0]["message"]["content"] == "raw"
    with httpx.stream(
        "POST", container.url + PREDICT, json={"messages": _user("streamed"), "stream": True}, timeout=30
    ) as streamed:
        lines = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    assert streamed.status_code == 200 and lines[-1] == "data: [DONE]"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"instances": []}, "instances"),
        ({"instances": [{"messages": _user("x"), "stream": True}]}, "instances[0].stream"),
        ({"instances": [{"messages": []}]}, "instances[0].messages"),
        ({"instances": "not a list"}, "instances"),
    ],
)
def test_a_bad_prediction_is_a_400_naming_it(container: RunningServer, body: dict[str, object], named: str) -> None:
    response = httpx.post(container.url + PREDICT, json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert named in response.text


def test_vertex_sets_the_port_and_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIP_HTTP_PORT", "9123")
    monkeypatch.setenv("AIP_HEALTH_ROUTE", HEALTH)
    monkeypatch.setenv("AIP_PREDICT_ROUTE", PREDICT)
    monkeypatch.setenv("AIP_MODE", "PREDICTION")
    args = argparse.Namespace(config=None, host=None, port=None, insecure_no_auth=None, log_level=None, model=None)
    settings = _serve_settings(args)
    assert (settings.port, settings.health_route, settings.predict_route) == (9123, HEALTH, PREDICT)
    assert settings.host == "0.0.0.0"
