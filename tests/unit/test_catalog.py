"""The metric catalogue: read from the metric objects and from vLLM's definitions, named
as Prometheus scrapes them, and the README's table is the one it makes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

from monitoring import catalog
from monitoring import metrics as m

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- metrics:start -->", "<!-- metrics:end -->"
TYPES = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}


def scraped(metric: catalog.Metric) -> set[str]:
    """The sample names prometheus_client writes for a twin of ``metric``, in the text
    format and in the OpenMetrics one (which Prometheus 2 asks for)."""
    registry = CollectorRegistry()
    twin = TYPES[metric.type](metric.name, metric.help, metric.labels, registry=registry)
    if metric.labels:
        twin = twin.labels(*("x" for _ in metric.labels))
    text = generate_latest(registry).decode() + openmetrics(registry).decode()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    return {n for n in names if not n.endswith("_created")}


def test_every_metric_object_is_catalogued_in_order() -> None:
    objects = [o for o in vars(m).values() if isinstance(o, Counter | Gauge | Histogram)]
    assert [c.name for c in catalog.livealign_metrics()] == [o._name for o in objects]
    assert catalog.livealign_metrics()[0] == catalog.Metric(
        "livealign_chat_requests_total".removesuffix("_total"),
        "counter",
        ("adapter", "arm", "stream", "status"),
        "Chat completion requests by outcome.",
        "livealign",
    )


@pytest.mark.parametrize("metric", catalog.catalog(), ids=lambda metric: metric.name)
def test_series_are_the_names_prometheus_scrapes(metric: catalog.Metric) -> None:
    assert set(metric.series) == scraped(metric)


def test_vllm_metrics_are_read_from_vllms_definitions() -> None:
    found = {metric.name: metric for metric in catalog.vllm_metrics()}
    assert sorted(found) == sorted(catalog.VLLM_METRICS)
    preemptions = found["vllm:num_preemptions"]
    assert (preemptions.type, preemptions.labels) == ("counter", ("model_name", "engine"))
    assert preemptions.series == ("vllm:num_preemptions_total", "vllm_num_preemptions_total")
    assert found["vllm:request_queue_time_seconds"].type == "histogram"
    assert found["vllm:kv_cache_usage_perc"].help == "KV-cache usage. 1 means 100 percent usage."
    assert {metric.source for metric in found.values()} == {catalog.VLLM_SOURCE}


def test_a_vllm_metric_vllm_no_longer_defines_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "VLLM_METRICS", (*catalog.VLLM_METRICS, "vllm:gone"))
    catalog.vllm_metrics.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"no longer defines \['vllm:gone'\]"):
            catalog.vllm_metrics()
    finally:
        catalog.vllm_metrics.cache_clear()


def test_the_table_has_a_row_for_every_metric_with_its_labels() -> None:
    table = catalog.markdown_table()
    for metric in catalog.catalog():
        labels = ", ".join(f"`{label}`" for label in metric.labels)
        assert f"| `{metric.scraped}` | {metric.type} | {labels} | {metric.help} |" in table
    assert table.count("\n| `") == len(catalog.catalog())


def test_python_m_monitoring_catalog_prints_the_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "monitoring.catalog"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=README.parent,
        check=True,
    )
    assert done.stdout == catalog.markdown_table()


def test_the_readme_table_is_the_generated_one() -> None:
    text = README.read_text()
    if START not in text or END not in text:
        pytest.fail(
            f"README.md has no {START} / {END} lines: put the output of "
            "`python -m monitoring.catalog` between them (in the Metrics section)"
        )
    between = text.split(START, 1)[1].split(END, 1)[0]
    assert between.strip() == catalog.markdown_table().strip(), (
        "README.md's metric table is out of date: paste `python -m monitoring.catalog` "
        f"between {START} and {END}"
    )
