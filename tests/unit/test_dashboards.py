"""The Grafana dashboards: the checked-in files are what the generator makes, every query
is valid PromQL and reads only metrics LiveAlign (or its vLLM engine) exports, filtered by
the dashboard's variables wherever the metric has the label."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring import catalog, dashboards, promql

NAMES = sorted(dashboards.DASHBOARDS)
QUERIES = [(name, expr) for name in NAMES for expr in dashboards.queries(dashboards.load(name))]
PROVISIONING = Path(dashboards.__file__).parent / "grafana" / "provisioning"


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board["templating"]["list"]}


def test_the_checked_in_files_are_what_the_generator_makes() -> None:
    assert dashboards.stale() == [], "out of date: run python -m monitoring.dashboards"


def test_the_check_finds_a_changed_a_missing_and_an_extra_file(tmp_path: Path) -> None:
    assert dashboards.main(["--out", str(tmp_path)]) == 0
    assert dashboards.main(["--check", "--out", str(tmp_path)]) == 0
    serving = tmp_path / "livealign-serving.json"
    serving.write_text(serving.read_text().replace("Requests", "Requests!", 1))
    (tmp_path / "livealign-pipeline.json").unlink()
    (tmp_path / "old.json").write_text("{}")
    assert dashboards.stale(tmp_path) == [
        "livealign-pipeline.json",
        "livealign-serving.json",
        "old.json",
    ]
    assert dashboards.main(["--check", "--out", str(tmp_path)]) == 1


@pytest.mark.parametrize(("name", "expr"), QUERIES)
def test_every_query_reads_only_exported_metrics(name: str, expr: str) -> None:
    exported = catalog.series()
    names = promql.metric_names(expr, exported)
    assert names and names <= exported.keys(), (name, expr)


@pytest.mark.parametrize(("name", "expr"), QUERIES)
def test_the_variables_filter_every_selector_whose_metric_has_their_label(
    name: str, expr: str
) -> None:
    exported, names = catalog.series(), set(variables(dashboards.load(name)))
    for selector in promql.selectors(expr):
        for metric in promql.selector_names(selector, exported):
            for label in set(exported[metric].labels) & names:
                assert f'{label}=~"${label}"' in promql.matchers(selector), (metric, expr)


def test_the_serving_dashboard_filters_by_adapter_and_arm() -> None:
    """Not only where it happens to: the rows that the issue asks per adapter and arm."""
    board = dashboards.load("livealign-serving.json")
    for var in ("adapter", "arm"):
        v = variables(board)[var]
        assert (v["multi"], v["includeAll"], v["allValue"]) == (True, True, ".*")
    filtered = [p["title"] for p in panels(board) if '"$arm"' in str(p["targets"])]
    for title in ("Requests", "Latency", "Time to first token", "Decode speed",
                  "Feedback per arm, by kind", "Mean fused score per arm"):  # fmt: skip
        assert title in filtered


def test_every_variable_lists_the_values_of_an_exported_label() -> None:
    exported = catalog.series()
    for name in NAMES:
        for var in variables(dashboards.load(name)).values():
            if var["type"] == "datasource":
                assert var["query"] == "prometheus"
                continue
            match = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["query"])
            assert match, var["query"]
            assert match[2] in exported[match[1]].labels, var["query"]


def test_every_query_is_valid_promql_to_promtool(tmp_path: Path) -> None:
    """promtool (Prometheus's own parser) on a rules file made of the queries, with
    Grafana's variables replaced as Grafana would replace them."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make system` installs Debian's prometheus"
    rules = [
        {"record": f"dashboard:query_{i}", "expr": promql.concrete(expr)}
        for i, (_, expr) in enumerate(QUERIES)
    ]
    path = tmp_path / "dashboards.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules)} rules found" in done.stdout


def test_promtool_check_catches_a_bad_query(tmp_path: Path) -> None:
    """The check above could fail: a query promtool refuses makes it fail."""
    promtool = shutil.which("promtool")
    assert promtool
    path = tmp_path / "bad.rules.yaml"
    bad = {"record": "dashboard:bad", "expr": "sum(rate(livealign_chat_requests_total))"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [bad]}]}))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, timeout=60)
    assert done.returncode != 0


def test_every_panel_and_query_reads_the_datasource_variable() -> None:
    for name in NAMES:
        board = dashboards.load(name)
        assert variables(board)["datasource"]["type"] == "datasource"
        sources = [p["datasource"] for p in panels(board)]
        sources += [t["datasource"] for p in panels(board) for t in p["targets"]]
        sources += [a["datasource"] for a in board["annotations"]["list"]]
        sources += [v["datasource"] for v in variables(board).values() if v["type"] == "query"]
        assert {(s["type"], s["uid"]) for s in sources} == {("prometheus", "${datasource}")}


def test_uids_and_panel_ids_are_fixed_and_unique() -> None:
    boards = [dashboards.load(name) for name in NAMES]
    assert sorted(b["uid"] for b in boards) == ["livealign-pipeline", "livealign-serving"]
    for board in boards:
        ids = [p["id"] for p in board["panels"]]
        assert ids == list(range(1, len(ids) + 1))
        refs = [[t["refId"] for t in p["targets"]] for p in panels(board)]
        assert all(len(set(r)) == len(r) for r in refs)


def test_the_rows_are_the_ones_asked_for() -> None:
    def rows(name: str) -> list[str]:
        return [p["title"] for p in dashboards.load(name)["panels"] if p["type"] == "row"]

    assert rows("livealign-serving.json") == [
        "Traffic and errors", "Latency, TTFT and tokens/s", "vLLM engine", "Feedback",
        "Canary: fused score", "Canary: weight and decisions",
    ]  # fmt: skip
    assert rows("livealign-pipeline.json") == [
        "Fusion weights", "Trainer rounds", "Stream processor", "Producer",
    ]  # fmt: skip


def test_canary_decisions_and_rounds_are_annotations() -> None:
    board = dashboards.load("livealign-serving.json")
    marked = {a["name"]: promql.metric_names(a["expr"]) for a in board["annotations"]["list"]}
    assert marked == {
        "Canary decisions": {"livealign_canary_decisions_total"},
        "Training rounds": {"livealign_trainer_rounds_total"},
    }


def test_the_vllm_metrics_catalogued_are_the_ones_the_dashboards_use() -> None:
    exported = catalog.series()
    used = {exported[m].name for _, e in QUERIES for m in promql.metric_names(e, exported)}
    assert {m for m in used if m.startswith("vllm:")} == set(catalog.VLLM_METRICS)


def test_a_vllm_metric_is_matched_under_both_its_scraped_names() -> None:
    """As the text format writes it (``vllm:...``) and as the OpenMetrics one does."""
    [expr] = [e for _, e in QUERIES if "kv_cache_usage_perc" in e]
    both = {"vllm:kv_cache_usage_perc", "vllm_kv_cache_usage_perc"}
    assert promql.metric_names(expr, catalog.series()) == both


def test_concrete_replaces_intervals_and_variables() -> None:
    expr = 'rate(x{a=~"$adapter", b=~"${arm}"}[$__rate_interval])'
    assert promql.concrete(expr) == 'rate(x{a=~".*", b=~".*"}[5m])'
    assert promql.concrete(expr, {"arm": "canary"}) == 'rate(x{a=~".*", b=~"canary"}[5m])'


def test_a_query_that_is_not_promql_is_refused() -> None:
    with pytest.raises(ValueError):
        promql.metric_names("sum(rate(livealign_chat_requests_total[5m])")
    with pytest.raises(ValueError, match="without a metric name"):
        promql.metric_names('sum({adapter="x"})')
    assert promql.metric_names('{__name__=~"nope_.*"}', ["livealign_x"]) == {"nope_.*"}


def test_the_provisioning_loads_the_generated_files_from_a_prometheus() -> None:
    source = yaml.safe_load((PROVISIONING / "datasources" / "livealign.yaml").read_text())
    [ds] = source["datasources"]
    assert ds["type"] == "prometheus"
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "livealign.yaml").read_text())
    [files] = provider["providers"]
    assert files["type"] == "file"
    assert files["options"]["path"] == "${LIVEALIGN_DASHBOARDS}"
    assert sorted(p.name for p in dashboards.OUT.glob("*.json")) == NAMES


def test_titled_queries_find_a_collapsed_rows_panels_and_the_annotations() -> None:
    board = {
        "panels": [
            {"type": "timeseries", "title": "A", "targets": [{"expr": "a"}, {"refId": "B"}]},
            {"type": "row", "title": "R", "panels": [{"title": "B", "targets": [{"expr": "b"}]}]},
        ],
        "annotations": {"list": [{"name": "Grafana"}, {"name": "Rounds", "expr": "r"}]},
    }
    assert dashboards.titled_queries(board) == [("A", "a"), ("B", "b"), ("Rounds", "r")]
