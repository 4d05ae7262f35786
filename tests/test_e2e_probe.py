"""The e2e's host probe (tests/e2e/probe.py), which reports kuard's outages during an upgrade."""

from __future__ import annotations

import http.server
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.e2e.probe import HostProbe, Outages


def test_the_longest_outage_runs_from_its_first_failure_to_the_next_answer() -> None:
    outages = Outages()
    for error, at in [(None, 0), ("refused", 2), ("refused", 4), (None, 9), ("timeout", 11), (None, 12)]:
        outages.record(error, at)
    outages.finish(20)
    assert outages.summary() == {"checks": 6, "failed": 3, "longest_gap_seconds": 7, "first_error": "refused"}


def test_an_outage_still_open_at_the_end_counts_to_the_end() -> None:
    outages = Outages()
    outages.record(None, 0)
    outages.record("refused", 5)
    outages.finish(30)
    assert outages.longest_seconds == 25


class Flaky(http.server.BaseHTTPRequestHandler):
    down = threading.Event()

    def do_GET(self) -> None:
        self.send_response(503 if self.down.is_set() else 200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def get(url: str) -> str | None:
    with urllib.request.urlopen(url, timeout=2) as answer:  # raises on 503
        return None if answer.status == 200 else str(answer.status)


def test_the_probe_counts_what_a_server_that_goes_away_did(server: str) -> None:
    with HostProbe(lambda: get(server), every=0.05) as probe:
        time.sleep(0.3)
        Flaky.down.set()
        time.sleep(0.5)
        Flaky.down.clear()
        time.sleep(0.3)
    outages = probe.outages
    assert 0 < outages.failed < outages.checks, outages
    assert 0.3 <= outages.longest_seconds < 1.0, outages
    assert "503" in str(outages.first_error)
