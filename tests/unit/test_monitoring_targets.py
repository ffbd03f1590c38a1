"""Scrape targets and the Prometheus config that discovers them."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY, Gauge

from monitoring import targets
from monitoring.prometheus import config, duration


def test_a_target_is_a_file_sd_entry_written_whole(tmp_path: Path) -> None:
    path = targets.register(tmp_path, "serving", "r#1/x", 9100, {"replica": "r#1/x"})
    assert path.name == "serving-r_1_x.json"  # safe for the file system and the glob
    assert json.loads(path.read_text()) == [
        {"targets": ["127.0.0.1:9100"], "labels": {"replica": "r#1/x"}}
    ]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    targets.register(tmp_path, "processor", "0", 9101)
    targets.clear(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_job_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown job"):
        targets.register(tmp_path, "grafana", "0", 1)


def test_an_exporter_serves_metrics_while_announced(tmp_path: Path) -> None:
    exporter = targets.Exporter(tmp_path, "serving", "a", {"replica": "a"})
    try:
        address = json.loads(exporter.path.read_text())[0]["targets"][0]
        assert address == f"127.0.0.1:{exporter.port}"
        assert "python_info" in httpx.get(f"http://{address}/metrics", timeout=5).text
    finally:
        exporter.close()
    assert not exporter.path.exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{address}/metrics", timeout=5)


def test_durations_are_what_prometheus_parses() -> None:
    assert duration(15) == "15s"
    assert duration(0.5) == "500ms"
    assert duration(2.25) == "2250ms"
    with pytest.raises(ValueError):
        duration(0)


def test_config_has_one_job_per_part_and_a_timeout_within_the_interval(tmp_path: Path) -> None:
    made = config(tmp_path, 2.0, [tmp_path / "alerts.yaml"])
    assert made["global"] == {
        "scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"
    }  # fmt: skip
    assert made["rule_files"] == [str(tmp_path / "alerts.yaml")]
    jobs = {c["job_name"]: c["file_sd_configs"][0]["files"] for c in made["scrape_configs"]}
    assert jobs == {job: [str(tmp_path / f"{job}-*.json")] for job in targets.JOBS}
    assert config(tmp_path, 60.0, [])["global"]["scrape_timeout"] == "10s"


def test_an_exporter_keeps_colons_in_names_whatever_the_scraper_asks(tmp_path: Path) -> None:
    gauge = Gauge("test:colon_gauge", "A name with a colon, as vLLM's are.")
    gauge.set(3)
    exporter = targets.Exporter(tmp_path, "serving", "colon")
    try:
        prometheus_accept = (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )
        r = httpx.get(
            f"http://127.0.0.1:{exporter.port}/metrics",
            headers={"Accept": prometheus_accept}, timeout=5,
        )  # fmt: skip
        assert "\ntest:colon_gauge 3.0\n" in r.text
    finally:
        exporter.close()
        REGISTRY.unregister(gauge)
