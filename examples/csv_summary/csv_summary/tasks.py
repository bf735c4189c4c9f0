"""Summarize a CSV dataset: the seed's story of "upload a dataset, process it, create a visualization".

The dataset comes inline (``csv_text``) or from a URL whose host is on the allow-list in
``CSV_SUMMARY_ALLOWED_HOSTS`` (comma-separated; empty, the default: no URL is fetched), so a client
cannot make the worker fetch whatever it names. The summary gives each numeric column's count, min,
max and mean, and a histogram drawn as a line of block characters; each other column's distinct
values (up to ``top``).
"""

from __future__ import annotations

import csv
import io
import os
import statistics
import urllib.parse
import urllib.request
from collections import Counter
from typing import Annotated, Any

from pydantic import Field

from taskqueue.tasks import task

MAX_BYTES = 5_000_000  # a dataset larger than this is refused, inline or fetched
FETCH_TIMEOUT = 10.0
BARS = " ▁▂▃▄▅▆▇█"


class DatasetError(ValueError):
    """The dataset cannot be read: none given, both given, a host off the allow-list, too large, not CSV."""


def allowed_hosts() -> set[str]:
    return {h.strip().lower() for h in os.environ.get("CSV_SUMMARY_ALLOWED_HOSTS", "").split(",") if h.strip()}


def fetch(url: str) -> str:
    """The text at ``url``, if its host is allowed and it is at most MAX_BYTES."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or (parts.hostname or "").lower() not in allowed_hosts():
        raise DatasetError(f"{parts.hostname!r} is not in CSV_SUMMARY_ALLOWED_HOSTS")
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as answer:  # the scheme and host checked above
        data = answer.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise DatasetError(f"the dataset is over {MAX_BYTES} bytes")
    return data.decode("utf-8-sig")


def histogram(values: list[float], bins: int) -> dict[str, Any]:
    """Counts in ``bins`` equal ranges from min to max, and the counts drawn as one line of bars."""
    low, high = min(values), max(values)
    width = (high - low) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(int((v - low) / width), bins - 1)] += 1
    top = max(counts)
    return {"counts": counts, "bars": "".join(BARS[round(c / top * (len(BARS) - 1))] for c in counts)}


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None  # NaN and inf: not numbers here


@task(name="csv.summarize", timeout=120, retries=2)
def summarize(
    csv_text: Annotated[str | None, Field(max_length=MAX_BYTES)] = None,
    url: Annotated[str | None, Field(max_length=2000)] = None,
    bins: Annotated[int, Field(ge=1, le=50)] = 10,
    top: Annotated[int, Field(ge=1, le=100)] = 5,
) -> dict[str, Any]:
    """Summarize a CSV dataset (inline `csv_text`, or a `url` on the allow-list): column statistics, histograms."""
    if (csv_text is None) == (url is None):
        raise DatasetError("give either csv_text or url")
    text = csv_text if csv_text is not None else fetch(url or "")
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise DatasetError("the dataset has a header and no rows, or is empty")
    columns: dict[str, Any] = {}
    for name in rows[0]:
        cells = [row[name] for row in rows if row.get(name) not in (None, "")]
        numbers = [n for n in map(_number, cells) if n is not None]
        if cells and len(numbers) == len(cells):
            columns[name] = {
                "type": "number",
                "count": len(numbers),
                "min": min(numbers),
                "max": max(numbers),
                "mean": round(statistics.fmean(numbers), 6),
                "histogram": histogram(numbers, bins),
            }
        else:
            counts = Counter(cells)
            columns[name] = {"type": "text", "count": len(cells), "distinct": len(counts),
                             "top": [[value, n] for value, n in counts.most_common(top)]}  # fmt: skip
    return {"rows": len(rows), "columns": columns}
