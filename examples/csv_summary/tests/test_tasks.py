"""The example task on its own: inline CSV, a URL on and off the allow-list (a local HTTP server), bad input."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from csv_summary.tasks import DatasetError, summarize
from taskqueue.tasks import load

CSV = "city,population,area\nOslo,709000,454\nBergen,291000,465\nTrondheim,212000,342\n"


@pytest.fixture
def served(monkeypatch) -> Iterator[str]:
    """CSV served on 127.0.0.1; its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = CSV.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/cities.csv"
    finally:
        server.shutdown()


def test_an_inline_dataset_is_summarized_with_histograms():
    summary = summarize(csv_text=CSV, bins=3)
    assert summary["rows"] == 3
    population = summary["columns"]["population"]
    assert (population["min"], population["max"], population["count"]) == (212000, 709000, 3)
    assert population["histogram"]["counts"] == [2, 0, 1] and len(population["histogram"]["bars"]) == 3
    assert summary["columns"]["city"] == {"type": "text", "count": 3, "distinct": 3,
                                          "top": [["Oslo", 1], ["Bergen", 1], ["Trondheim", 1]]}  # fmt: skip


def test_a_url_is_fetched_only_from_an_allowed_host(served, monkeypatch):
    with pytest.raises(DatasetError, match="not in CSV_SUMMARY_ALLOWED_HOSTS"):
        summarize(url=served)
    monkeypatch.setenv("CSV_SUMMARY_ALLOWED_HOSTS", "127.0.0.1")
    assert summarize(url=served)["rows"] == 3
    with pytest.raises(DatasetError):
        summarize(url="file:///etc/passwd")


def test_bad_datasets_fail_with_a_reason():
    cases = [({}, "either"), ({"csv_text": CSV, "url": "http://x"}, "either"), ({"csv_text": "a,b\n"}, "no rows")]
    for kwargs, said in cases:
        with pytest.raises(DatasetError, match=said):
            summarize(**kwargs)


def test_the_package_registers_its_task_through_its_entry_point():
    """Installed (pip install examples/csv_summary), the task is in every process's catalogue."""
    task = load()["csv.summarize"]
    assert (task.timeout, task.retries) == (120, 2)
    assert task.arguments({"csv_text": CSV}) == [CSV, None, 10, 5]
    with pytest.raises(ValueError, match="'bins'"):
        task.arguments({"csv_text": CSV, "bins": 0})
