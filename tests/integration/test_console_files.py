"""The console's files as the server sends them: the page at `/`, its scripts, and nothing else."""

from __future__ import annotations

import httpx

from tests.support.server import RunningServer


def test_the_page_and_its_files_are_served_with_a_strict_policy(fake_server: RunningServer) -> None:
    page = httpx.get(fake_server.url + "/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/console/app.js">' in page.text
    for name, kind in (
        ("app.js", "text/javascript"),
        ("console.css", "text/css"),
        ("playground.js", "text/javascript"),
    ):
        served = httpx.get(f"{fake_server.url}/console/{name}")
        assert served.status_code == 200 and served.headers["content-type"].startswith(kind), name


def test_an_unchanged_file_is_not_sent_again(fake_server: RunningServer) -> None:
    first = httpx.get(fake_server.url + "/console/app.js")
    again = httpx.get(fake_server.url + "/console/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    stale = httpx.get(fake_server.url + "/console/app.js", headers={"If-None-Match": '"other"'})
    assert stale.status_code == 200 and stale.content == first.content


def test_only_the_console_files_are_served(fake_server: RunningServer) -> None:
    for path in ("/console/missing.js", "/console/..%2Fapp.py", "/console/%2e%2e", "/console/__init__.py"):
        answer = httpx.get(fake_server.url + path)
        assert answer.status_code == 404, path
        assert answer.json()["error"]["status"] == "NOT_FOUND"
