"""Fair admission on the real engine: a request too large for the free slots neither blocks the
smaller ones behind it nor is starved by them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from openvertex.settings import LocalBackendSettings, Settings
from tests.integration.test_local_capacity import AUTH, ENDLESS, MODEL, metric, wait_for_metric
from tests.support.server import serve

SHORT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4}
LONG = {**ENDLESS, "max_tokens": 2000, "stream": True}  # decodes for many seconds


def test_a_small_request_goes_past_a_large_one_that_must_wait() -> None:
    settings = Settings(port=0, backends={"local": LocalBackendSettings(n_parallel=4, n_ctx=2048, n_threads=1)})
    with serve(settings) as server, ThreadPoolExecutor(max_workers=1) as pool:
        url = server.chat_url
        with httpx.stream("POST", url, json=LONG, headers=AUTH, timeout=60) as running:
            lines = running.iter_lines()  # held: a dropped iterator closes the response
            next(line for line in lines if line.startswith("data: {"))
            # One slot is busy: four candidates do not fit, so the large request waits...
            large = pool.submit(httpx.post, url, json={**SHORT, "n": 4}, headers=AUTH, timeout=120)
            wait_for_metric(server, "openvertex_requests_waiting", 1)
            # ...and a small one behind it starts and finishes all the same.
            small = httpx.post(url, json=SHORT, headers=AUTH, timeout=60)
            assert small.status_code == 200, small.text
            assert not large.done()
            assert metric(server, "openvertex_requests_waiting") == 1
        # The long request left: the large one gets its four slots.
        answer = large.result(timeout=120)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["choices"]) == 4
        wait_for_metric(server, "openvertex_sequences_running", 0)
