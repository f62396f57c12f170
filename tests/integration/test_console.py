"""The web console in a real headless Chromium: chat on the embedded model, a call answered by
hand, an attachment, copy-as-code run for real, the live status, the admin flow, the key prompt."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect

from openvertex.backends.fake import FakeBackend
from openvertex.protocol import generate_content as gc
from openvertex.settings import EndpointSettings, ModelRoute, Settings
from tests.support.browser import chromium, screenshot
from tests.support.media import text_png
from tests.support.openai_upstream import WORDS, Upstream, upstream_server
from tests.support.server import RunningServer, serve

TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert errors == [], f"the page raised: {errors}"


def open_console(page: Page, server: RunningServer, tab: str = "playground") -> None:
    page.goto(f"{server.url}/#{tab}")
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)


def model_turns(page: Page) -> list[str]:
    return page.locator("li.turn.model").all_inner_texts()


def answer_text(page: Page, index: int) -> str:
    """The text of the index-th model answer, once it has finished."""
    turn = page.locator("li.turn.model").nth(index)
    page.wait_for_function(
        """i => { const turn = document.querySelectorAll('li.turn.model')[i];
        return (turn && !turn.classList.contains('pending')) || document.querySelector('li.turn.error'); }""",
        arg=index,
        timeout=120_000,
    )
    assert page.locator("li.turn.error").count() == 0, page.locator("li.turn.error").all_inner_texts()
    return "".join(turn.locator(":scope > .text").all_inner_texts())


def send(page: Page, prompt: str) -> None:
    page.fill("#prompt", prompt)
    page.press("#prompt", "Control+Enter")  # the keyboard sends


def test_a_streamed_chat_on_the_embedded_model_then_the_native_surface(page: Page, local_server: RunningServer) -> None:
    open_console(page, local_server)
    page.fill("#seed", "7")
    page.fill("#max-tokens", "16")
    page.evaluate(
        """() => { window.updates = 0;
        new MutationObserver(() => window.updates++).observe(document.getElementById('messages'),
          {subtree: true, childList: true, characterData: true}); }"""
    )
    with page.expect_response(lambda response: "endpoints/openapi/chat/completions" in response.url) as answered:
        send(page, "Say hello to me")
    assert answered.value.headers["content-type"].startswith("text/event-stream")
    first = answer_text(page, 0)
    assert first.strip()
    assert page.evaluate("window.updates") >= 4  # drawn as it streamed, not once at the end
    screenshot(page, "01-openai-stream")

    # The same conversation goes on over the native surface: the first exchange is sent back as contents.
    page.check("input[name=surface][value=native]")
    with page.expect_request(lambda request: ":streamGenerateContent?alt=sse" in request.url) as sent:
        send(page, "And now say goodbye")
    body = json.loads(sent.value.post_data or "")
    assert [content["role"] for content in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][1]["parts"][-1]["text"] == first
    assert body["generationConfig"] == {"maxOutputTokens": 16, "seed": 7}
    assert answer_text(page, 1).strip()
    screenshot(page, "02-native-stream")


def test_a_function_call_answered_by_hand(page: Page, local_server: RunningServer) -> None:
    open_console(page, local_server)
    page.click("summary:has-text('Tools and structured output')")
    page.fill("#tools", json.dumps(TOOLS))
    page.select_option("#tool-mode", "ANY")
    page.fill("#seed", "3")
    send(page, "What is the weather in Paris?")
    answer = page.locator("form.answer")
    expect(answer).to_be_visible(timeout=120_000)
    expect(page.locator(".call-name").first).to_have_text("call get_weather")
    expect(page.locator(".call .badge")).to_have_text("signed")  # the call's thought signature
    screenshot(page, "03-function-call")

    page.select_option("#tool-mode", "NONE")  # the answer to the result is text
    answer.locator("textarea").fill('{"temperature_c": 21, "sky": "clear"}')
    with page.expect_request(lambda request: "chat/completions" in request.url) as sent:
        answer.locator("button[type=submit]").click()
    messages = json.loads(sent.value.post_data or "")["messages"]
    assert [message["role"] for message in messages] == ["user", "assistant", "tool"]
    call = messages[1]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert call["extra_content"]["google"]["thought_signature"]  # sent back as it came
    assert messages[2] == {
        "role": "tool",
        "tool_call_id": call["id"],
        "name": "get_weather",
        "content": '{"temperature_c":21,"sky":"clear"}',
    }
    assert answer_text(page, 1).strip()
    expect(page.locator(".call.result .call-name")).to_have_text("result of get_weather")
    screenshot(page, "04-function-result")


def prompt_tokens(page: Page, index: int) -> int:
    facts = page.locator("li.turn.model").nth(index).locator(".facts").inner_text()
    return int(facts.split("tokens: ", 1)[1].split(" in", 1)[0])


def test_an_image_attachment_reaches_the_model(page: Page, local_server: RunningServer) -> None:
    image = text_png("OPEN DAILY")
    open_console(page, local_server)
    page.fill("#max-tokens", "8")
    page.set_input_files("#attach", files=[{"name": "sign.png", "mimeType": "image/png", "buffer": image}])
    expect(page.locator("#attachments li")).to_contain_text("sign.png (image/png)")
    with page.expect_request(lambda request: "chat/completions" in request.url) as sent:
        send(page, "What does the sign say?")
    content = json.loads(sent.value.post_data or "")["messages"][0]["content"]
    assert content[0] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(image).decode()},
    }
    assert content[1] == {"type": "text", "text": "What does the sign say?"}
    answer_text(page, 0)
    expect(page.locator("li.turn.user img.attached")).to_be_visible()
    with_image = prompt_tokens(page, 0)
    screenshot(page, "05-image-attachment")

    page.click("#new-chat")
    send(page, "What does the sign say?")
    answer_text(page, 0)
    assert with_image > prompt_tokens(page, 0)  # what the image says is in the prompt


def run_code(page: Page, kind: str) -> str:
    page.check(f"input[name=code-kind][value={kind}]")
    page.check("input[name=code-where][value=here]")
    code = page.inner_text("#code-text")
    command = ["bash", "-c", code] if kind == "curl" else [sys.executable, "-c", code]
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENVERTEX_")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def sse_text(output: str) -> str:
    text = ""
    for line in output.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[6:]).get("choices", []):
                text += choice["delta"].get("content") or ""
    return text


def test_copy_as_code_gives_the_same_answer(page: Page, local_server: RunningServer) -> None:
    open_console(page, local_server)
    page.fill("#seed", "11")
    page.fill("#temperature", "0.9")
    page.fill("#max-tokens", "12")
    send(page, "Name a colour.")
    shown = answer_text(page, 0)
    page.locator("li.turn.model button:has-text('Code')").click()
    expect(page.locator("#code-dialog")).to_be_visible()
    assert sse_text(run_code(page, "curl")) == shown
    screenshot(page, "06-copy-as-code-curl")
    assert run_code(page, "openai").rstrip("\n") == shown
    assert run_code(page, "genai").rstrip("\n") == shown  # the native surface: the same request inside
    page.check("input[name=code-where][value=vertex]")
    vertex = page.inner_text("#code-text")
    assert "genai.Client(vertexai=True" in vertex and "127.0.0.1" not in vertex
    screenshot(page, "07-copy-as-code-genai-vertex")
    page.click("#code-close")


def test_the_status_page_follows_a_load(page: Page, local_server: RunningServer) -> None:
    open_console(page, local_server, "status")
    generated = page.locator("#backends tbody tr").first.locator("td").nth(7)
    expect(generated).not_to_have_text("", timeout=10_000)
    before = int(generated.inner_text())

    def load() -> None:
        with httpx.Client(timeout=120) as client:
            for _ in range(3):
                client.post(
                    local_server.chat_url,
                    headers={"Authorization": "Bearer any"},
                    json={
                        "model": "smollm2",
                        "messages": [{"role": "user", "content": "Count to ten"}],
                        "max_tokens": 24,
                    },
                ).raise_for_status()

    loader = threading.Thread(target=load)
    loader.start()
    try:
        page.wait_for_function(
            "n => Number(document.querySelector('#backends tbody tr td:nth-child(8)').textContent) > n",
            arg=before,
            timeout=60_000,
        )
        screenshot(page, "08-status-under-load")
    finally:
        loader.join(timeout=180)
    page.wait_for_function(
        "() => /all [1-9]|all 0\\.[0-9]*[1-9]/.test(document.querySelector('#chart-requests svg title').textContent)"
        " || document.querySelectorAll('#chart-requests path')[0].getAttribute('d').includes('L')",
        timeout=10_000,
    )
    requests = page.locator("#chart-requests path.chart-line").first.get_attribute("d") or ""
    heights = [float(point.split(",")[1]) for point in requests.replace("M", "L").split("L") if "," in point]
    assert min(heights) < max(heights)  # the request rate rose off the floor within the chart
    assert int(generated.inner_text()) >= before + 3
    screenshot(page, "09-status-after-load")


@pytest.fixture
def keyed_server(tmp_path: Path) -> Iterator[RunningServer]:
    settings = Settings(
        port=0, state_dir=tmp_path / "state", api_keys=["user-key"], admin_keys=["admin-secret"], keys_refresh_s=0.2
    )
    with serve(settings, backends={"local": FakeBackend()}) as server:
        yield server


def test_the_page_asks_for_a_key_when_keys_are_on(page: Page, keyed_server: RunningServer) -> None:
    page.goto(keyed_server.url + "/")
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible(timeout=15_000)
    screenshot(page, "10-key-prompt")
    page.fill("#key-input", "not-a-key")
    page.press("#key-input", "Enter")
    expect(page.locator("#key-error")).to_contain_text("refused")
    page.fill("#key-input", "user-key")
    page.press("#key-input", "Enter")
    expect(dialog).to_be_hidden()
    expect(page.locator("#model-list option").first).to_have_attribute("value", "google/gemini-2.5-flash")
    send(page, "echo this")
    assert answer_text(page, 0).strip()
    assert page.evaluate("sessionStorage.getItem('openvertex.apiKey')") == "user-key"
    assert page.evaluate("localStorage.length") == 0  # the key lives in this tab's session only


def test_the_admin_flow_issues_and_revokes_a_key(page: Page, keyed_server: RunningServer) -> None:
    page.goto(keyed_server.url + "/#admin")
    page.fill("#key-input", "user-key")
    page.press("#key-input", "Enter")
    page.fill("#admin-key", "not-the-admin-key")
    page.press("#admin-key", "Enter")
    expect(page.locator("#notice")).to_contain_text("refused")
    page.fill("#admin-key", "admin-secret")
    page.press("#admin-key", "Enter")
    expect(page.locator("#admin-panel")).to_be_visible()

    form = page.locator("#key-form")
    form.locator("input[name=name]").fill("ci-bot")
    form.locator("input[name=models]").fill("google/*")
    form.locator("input[name=requests_per_minute]").fill("30")
    form.locator("button[type=submit]").click()
    expect(page.locator("#new-key")).to_be_visible()
    issued = page.inner_text("#new-key-value")
    row = page.locator("#keys tr[data-key=ci-bot]")
    expect(row).to_contain_text("active")
    expect(row).to_contain_text("google/*")
    screenshot(page, "11-admin-key-issued")

    used = httpx.post(
        keyed_server.chat_url,
        headers={"Authorization": f"Bearer {issued}"},
        json={"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert used.status_code == 200
    # Its usage shows in the chart once recorded (the page reads it again when the period changes).
    for hours in ("1", "24") * 10:
        page.select_option("#usage-hours", hours)
        if page.locator("#chart-usage-requests .chart-key", has_text="ci-bot").count():
            break
        time.sleep(0.3)
    expect(page.locator("#chart-usage-requests .chart-key")).to_have_text("ci-bot")
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button:has-text('Revoke')").click()
    expect(row).to_contain_text("revoked")
    screenshot(page, "12-admin-key-revoked")
    deadline = time.monotonic() + 5
    while httpx.get(f"{keyed_server.url}/v1/models", headers={"Authorization": f"Bearer {issued}"}).status_code != 401:
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.1)
    expect(page.locator("#chart-usage-requests svg")).to_be_visible()


def test_phone_width_and_dark_theme(browser: Browser, local_server: RunningServer) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="light")
    page = context.new_page()
    try:
        open_console(page, local_server)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
        light = page.evaluate("getComputedStyle(document.body).backgroundColor")
        screenshot(page, "13-phone-light")
        page.click("#theme-button")
        dark = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert light == "rgb(255, 255, 255)" and dark != light
        channels = [int(value) for value in dark[4:-1].split(",")]
        assert sum(channels) < 150
        screenshot(page, "14-phone-dark")
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        assert page.evaluate("document.documentElement.dataset.theme") == "dark"  # remembered
    finally:
        context.close()


def test_thoughts_fold_and_tags_round_trip(page: Page, local_server: RunningServer) -> None:
    """The answer reader and request builder the page runs, on a tagged answer."""
    open_console(page, local_server)
    result = page.evaluate(
        """async () => {
        const c = await import('/console/conversation.js');
        const state = c.openaiReader();
        c.addOpenaiChunk(state, {choices: [{message: {content: '<thought>think\\nmore</thought>\\n\\nAnswer',
          extra_content: {google: {thought_signature: 'c2ln'}}}, finish_reason: 'stop'}]});
        const turn = c.openaiTurn(state);
        const options = c.readOptions({includeThoughts: true, safety: {}});
        const body = c.openaiBody('m', [{role: 'user', parts: [{text: 'q'}]}, turn], options);
        return {parts: turn.parts, message: body.messages[1], google: body.extra_body.google};
      }"""
    )
    assert result["parts"] == [{"text": "think\nmore", "thought": True}, {"text": "Answer", "thoughtSignature": "c2ln"}]
    assert result["message"] == {
        "role": "assistant",
        "content": "<thought>think\nmore</thought>\n\nAnswer",
        "extra_content": {"google": {"thought_signature": "c2ln"}},
    }
    assert result["google"] == {"thinking_config": {"include_thoughts": True}, "thought_tag_marker": "thought"}


def test_thoughts_shown_folded_and_a_schema_answer(page: Page, local_server: RunningServer) -> None:
    open_console(page, local_server)
    page.fill("#seed", "7")
    page.fill("#max-tokens", "40")
    page.fill("#thinking-budget", "16")
    page.check("#include-thoughts")
    page.check("input[name=surface][value=native]")
    send(page, "Is 7 a prime number?")
    answer_text(page, 0)
    thought = page.locator("li.turn.model details.thought")
    expect(thought).to_have_count(1)
    assert thought.get_attribute("open") is None  # folded until opened
    expect(thought.locator(".text")).to_be_hidden()
    thought.locator("summary").click()
    expect(thought.locator(".text")).to_be_visible()
    screenshot(page, "15-thoughts-folded-open")

    page.click("#new-chat")
    page.fill("#thinking-budget", "0")
    page.uncheck("#include-thoughts")
    page.click("summary:has-text('Tools and structured output')")
    schema = {"type": "object", "properties": {"prime": {"type": "boolean"}}, "required": ["prime"]}
    page.fill("#schema", json.dumps(schema))
    page.check("input[name=surface][value=openai]")
    send(page, "Is 7 a prime number?")
    assert isinstance(json.loads(answer_text(page, 0))["prime"], bool)


def test_a_self_deployed_endpoint_from_the_playground(page: Page, tmp_path: Path) -> None:
    with upstream_server(Upstream()) as upstream:
        endpoint = EndpointSettings(upstreams=[upstream.url], health_interval_s=60)
        settings = Settings(port=0, state_dir=tmp_path / "state", endpoints={"4242": endpoint})
        with serve(settings, backends={"local": FakeBackend()}) as server:
            open_console(page, server)
            page.select_option("#endpoint", "4242")
            expect(page.locator("input[name=surface][value=native]")).to_be_disabled()  # chat completions only
            with page.expect_request(lambda request: "/endpoints/4242/chat/completions" in request.url):
                send(page, "Hello there")
            assert answer_text(page, 0) == "".join(WORDS)
            assert json.loads(upstream.bodies[0])["messages"] == [{"role": "user", "content": "Hello there"}]
            page.goto(f"{server.url}/#status")
            row = page.locator("#endpoints tbody tr").first
            expect(row).to_contain_text("4242")
            expect(row).to_contain_text("healthy")
            assert "@" not in row.inner_text()
            screenshot(page, "16-endpoint-status")


def test_a_stream_read_whatever_its_line_endings_and_reads(page: Page, fake_server: RunningServer) -> None:
    """CRLF frames (the native surface's, sse-starlette's) split inside a line ending by the
    network, and CR-only lines, are read as the frames they are."""
    open_console(page, fake_server)
    events = page.evaluate(
        """async () => {
        const { stream } = await import('/console/api.js');
        const reads = ['data: {"a":1}\\r\\n\\r', '\\ndata: {"a":2}\\r', '\\n\\r\\n', 'data: {"a":3}\\r\\r',
          'data: {"a"', ':4}\\r', '\\r'];
        const real = window.fetch;
        window.fetch = async () => new Response(new ReadableStream({
          start(controller) {
            for (const read of reads) controller.enqueue(new TextEncoder().encode(read));
            controller.close();
          },
        }), {headers: {'content-type': 'text/event-stream'}});
        const seen = [];
        try {
          for await (const event of stream('/anywhere', {})) seen.push(event.a);
        } finally {
          window.fetch = real;
        }
        return seen;
      }"""
    )
    assert events == [1, 2, 3, 4]


def test_an_exchange_without_an_answer_is_not_sent_again(
    page: Page, fake_server: RunningServer, fake: FakeBackend
) -> None:
    """A blocked prompt's empty answer stays on the page but out of the next request: Gemini
    refuses a turn without parts, and the prompt would block every request after it."""
    fake.add([gc.GenerateContentResponse.model_validate({"promptFeedback": {"blockReason": "SAFETY"}})])
    open_console(page, fake_server)
    page.check("input[name=surface][value=native]")
    send(page, "a blocked prompt")
    expect(page.locator("li.turn.model .facts")).to_contain_text("SAFETY")
    expect(page.locator("li.turn.model.failed")).to_have_count(1)
    with page.expect_request(lambda request: ":streamGenerateContent" in request.url) as sent:
        send(page, "another prompt")
    assert json.loads(sent.value.post_data or "")["contents"] == [
        {"role": "user", "parts": [{"text": "another prompt"}]}
    ]
    assert answer_text(page, 1) == "another prompt"


def test_thoughts_go_back_only_where_the_server_reads_them_as_thoughts(page: Page, fake_server: RunningServer) -> None:
    """With thoughts no longer shown (no thought_tag_marker), an earlier turn's thoughts are left
    out of the OpenAI messages rather than sent as text the model said."""
    open_console(page, fake_server)
    message = page.evaluate(
        """async () => {
        const c = await import('/console/conversation.js');
        const turn = {role: 'model', parts: [{text: 'hmm', thought: true}, {text: 'Answer', thoughtSignature: 'c2ln'}]};
        const contents = [{role: 'user', parts: [{text: 'q'}]}, turn, {role: 'user', parts: [{text: 'q2'}]}];
        const body = c.openaiBody('m', contents, c.readOptions({safety: {}}));
        return [body.messages[1], body.extra_body];
      }"""
    )
    assert message == [
        {"role": "assistant", "content": "Answer", "extra_content": {"google": {"thought_signature": "c2ln"}}},
        None,
    ]


def test_routes_offered_as_models_and_another_publishers_model_on_the_native_surface(
    page: Page, tmp_path: Path
) -> None:
    """A route's glob is offered as a name it matches, and `meta/llama-3` is called on the native
    surface as publishers/meta/models/llama-3, which the server routes back to `meta/*`."""
    routes = [ModelRoute(model="google/gemini-*", backend="local"), ModelRoute(model="meta/*", backend="local")]
    settings = Settings(port=0, state_dir=tmp_path / "state", routes=routes)
    with serve(settings, backends={"local": FakeBackend()}) as server:
        open_console(page, server)
        options = page.locator("#model-list option")
        assert [options.nth(i).get_attribute("value") for i in range(options.count())] == [
            "google/gemini-2.5-flash",
            "meta/gemini-2.5-flash",
        ]
        page.fill("#model", "meta/llama-3")
        page.check("input[name=surface][value=native]")
        with page.expect_request(lambda request: ":streamGenerateContent" in request.url) as sent:
            send(page, "hello from the console")
        assert "/publishers/meta/models/llama-3:streamGenerateContent?alt=sse" in sent.value.url
        assert answer_text(page, 0) == "hello from the console"


def test_the_status_polls_once_however_often_its_tab_is_opened(page: Page, fake_server: RunningServer) -> None:
    """Leaving the status tab and coming back while a reading is under way leaves one poll going,
    not one more each time."""
    held: list[Route] = []

    def hold(route: Route) -> None:  # each reading waits until let through
        held.append(route)

    page.route("**/console/api/status", hold)
    open_console(page, fake_server, "status")
    status = page.locator("section#status")
    for _ in range(5):
        page.evaluate("location.hash = '#playground'")
        expect(status).to_be_hidden()
        page.evaluate("location.hash = '#status'")
        expect(status).to_be_visible()
    deadline = time.monotonic() + 10
    while len(held) < 6:
        assert time.monotonic() < deadline, len(held)
        page.wait_for_timeout(50)
    answered = len(held)
    for route in held[:answered]:
        route.fulfill(json={"error": {"code": 503, "message": "held", "status": "UNAVAILABLE"}}, status=503)
    while len(held) == answered:
        assert time.monotonic() < deadline + 5
        page.wait_for_timeout(100)
    page.wait_for_timeout(2500)  # past another poll's interval: any other round would have asked by now
    assert len(held) == answered + 1
