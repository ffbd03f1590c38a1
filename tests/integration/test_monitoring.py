"""Monitoring against a real Prometheus: every part of the stack is scraped (each serving
replica on its own endpoint, vLLM's engine metrics with LiveAlign's), and every dashboard
panel's query and every alert expression evaluates without error, the core panels with data.

The session's stack runs Prometheus (conftest); this module adds the trainer and the canary
controller to it for its own duration."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from livealign.stack import APP_NAME, LocalStack, resolve_model
from monitoring import dashboards, promql, targets
from monitoring.prometheus import ALERT_RULES, PrometheusServer, QueryError, query
from serving.config import DEPLOYMENT_NAME
from streaming.broker import free_port

# Panels that must show data once chats and feedback went through (by title).
CORE_PANELS = {
    "Requests", "Latency", "Time to first token", "Engine queue", "KV cache usage",
    "Feedback accepted, by kind", "Lag", "Throughput",
}  # fmt: skip
# vLLM's own metrics every replica must expose (queue, KV cache, preemptions, prefix cache).
ENGINE_METRICS = (
    "vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions_total", "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total", "vllm:generation_tokens_total",
)  # fmt: skip
TIMEOUT_S = 60.0

T = TypeVar("T")


def eventually(check: Callable[[], T | None], what: str, timeout: float = TIMEOUT_S) -> T:
    """``check()``'s first truthy answer, asked every half second."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


# --- Prometheus on its own: discovery and rules, no stack --------------------------------


def test_file_discovery_follows_targets_as_they_come_and_go(tmp_path: Path) -> None:
    """Two exporters (two replicas, say) are scraped as soon as they announce themselves,
    and no longer once one is closed; a rule file is loaded and evaluated."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"alert": "Down", "expr": "up == 0"}]}]})
    )
    folder = tmp_path / "targets"
    with PrometheusServer(tmp_path / "prom", folder, free_port(), 0.5, [rules]) as prom:
        a = targets.Exporter(folder, "serving", "replica-a", {"replica": "a"})
        b = targets.Exporter(folder, "serving", "replica-b", {"replica": "b"})
        try:

            def replicas_up() -> set[str]:
                return {s["metric"]["replica"] for s in query(prom.url, 'up{job="serving"} == 1')}

            eventually(lambda: replicas_up() == {"a", "b"}, "both replicas scraped")
            a.close()
            eventually(lambda: replicas_up() == {"b"}, "a closed replica dropped")
        finally:
            a.close()
            b.close()
        groups = httpx.get(f"{prom.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        assert [r["name"] for g in groups for r in g["rules"]] == ["Down"]


def test_a_bad_query_is_an_error(tmp_path: Path) -> None:
    # What the dashboard check relies on: Prometheus' refusal is raised, not returned empty.
    with PrometheusServer(tmp_path / "prom", tmp_path / "targets", free_port(), 1.0) as prom:
        assert query(prom.url, "vector(1)")[0]["value"][1] == "1"
        with pytest.raises(QueryError, match="bad_data"):
            query(prom.url, "sum(rate(x[5m])")


# --- the stack ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(stack: LocalStack) -> str:
    assert stack.prometheus is not None, "the session's stack runs without --monitoring"
    return stack.prometheus.url


@pytest.fixture(scope="module")
def every_part(stack: LocalStack) -> Iterator[None]:
    """The trainer and the canary controller, which the session's stack leaves out, for
    this module: a schedule no round falls due on (other tests drive rounds themselves)."""
    model = resolve_model(stack.settings)
    config = stack.settings.trainer_config(model, stack.bootstrap).model_copy(
        update={"interval_s": 1e9, "min_new_records": 10**9}
    )
    stack.start_trainer(model, config)
    stack.start_canary()
    try:
        yield
    finally:
        stack.stop_trainer()
        stack.stop_canary()


@pytest.fixture(scope="module")
def traffic(stack: LocalStack, client: OpenAI, http: httpx.Client, every_part: None) -> None:
    """Chats (streamed and not) and feedback of several kinds through the public API, in
    two rounds with a scrape after each: a series' first value is no increase to
    Prometheus, so rates and quantiles have something only from the second round on."""
    for n in range(2):
        chat_and_rate(client, http, n)
        eventually(lambda: scraped(stack), "Prometheus scraped the replicas after the traffic")


def chat_and_rate(client: OpenAI, http: httpx.Client, n: int) -> None:
    answers = []
    for question in ("Name a colour.", "Name a fruit."):
        completion = client.chat.completions.create(
            model="livealign", messages=[{"role": "user", "content": f"{question} ({n})"}],
            max_tokens=8,
        )  # fmt: skip
        answers.append(completion.model_extra["livealign"])  # type: ignore[index]
    stream = client.chat.completions.create(
        model="livealign", messages=[{"role": "user", "content": f"Count to three. ({n})"}],
        max_tokens=8, stream=True,
    )  # fmt: skip
    answers.append(next(iter(stream)).model_extra["livealign"])  # type: ignore[index]
    for _ in stream:
        pass
    events = [("thumb", 1), ("rating", 4), ("comment", "short and right"), ("click", "copy")]
    for info, (kind, value) in zip(answers * 2, events, strict=False):
        body = {"response_id": info["response_id"], "feedback_token": info["feedback_token"]}
        r = http.post("/v1/feedback", json={**body, "kind": kind, "value": value})
        assert r.status_code == 202, r.text


def scraped(stack: LocalStack) -> bool:
    """Whether Prometheus has every replica's feedback count as the replica has it now
    (read from its own endpoint)."""
    assert stack.prometheus is not None
    for path in stack.settings.targets_dir.glob("serving-*.json"):
        address = json.loads(path.read_text())[0]["targets"][0]
        direct = counter_total(f"http://{address}/metrics", "livealign_feedback")
        if direct == 0:  # a replica none of it reached
            continue
        expr = f'sum(livealign_feedback_total{{instance="{address}"}})'
        got = query(stack.prometheus.url, expr)
        if not got or float(got[0]["value"][1]) < direct:
            return False
    return True


def counter_total(url: str, family: str) -> float:
    """Sum of a counter family's samples on a metrics endpoint."""
    text = httpx.get(url, timeout=10).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == family
        for s in f.samples
        if s.name.endswith("_total")
    )


def announced(stack: LocalStack) -> dict[str, set[str]]:
    """job -> the addresses announced in the targets folder."""
    out: dict[str, set[str]] = {}
    for path in stack.settings.targets_dir.glob("*.json"):
        for group in json.loads(path.read_text()):
            job = path.name.split("-", 1)[0]
            out.setdefault(job, set()).update(group["targets"])
    return out


def test_every_part_and_replica_is_scraped_and_up(
    stack: LocalStack, prometheus: str, every_part: None
) -> None:
    from ray import serve

    deployment = serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME]
    replicas = deployment.replica_states.get("RUNNING", 0)
    wanted = announced(stack)
    assert set(wanted) == {"serving", "processor", "trainer", "canary"}
    assert len(wanted["serving"]) == replicas >= 1  # one endpoint per replica

    def all_up() -> dict[str, set[str]] | None:
        up: dict[str, set[str]] = {}
        for s in query(prometheus, "up == 1"):
            up.setdefault(s["metric"]["job"], set()).add(s["metric"]["instance"])
        return up if up == wanted else None

    eventually(all_up, f"every announced target up: {wanted}")


def test_engine_metrics_are_on_each_replica(
    stack: LocalStack, prometheus: str, traffic: None
) -> None:
    replicas = announced(stack)["serving"]
    for name in ENGINE_METRICS:
        got = {s["metric"]["instance"] for s in query(prometheus, f'{name}{{job="serving"}}')}
        assert got == replicas, name
    generated = query(prometheus, 'sum(vllm:generation_tokens_total{job="serving"})')
    assert float(generated[0]["value"][1]) > 0


@dataclass(frozen=True)
class Query:
    source: str  # the dashboard's or rule file's name
    title: str  # the panel's, annotation's or rule's
    expr: str  # as Prometheus gets it: Grafana's variables filled in (All, and intervals)


def rules() -> list[dict[str, Any]]:
    if not ALERT_RULES.is_file():
        return []
    loaded = yaml.safe_load(ALERT_RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def all_queries() -> list[Query]:
    found = [
        Query(name, title, promql.concrete(expr))
        for name in sorted(dashboards.DASHBOARDS)
        for title, expr in dashboards.titled_queries(dashboards.load(name))
    ]
    name = ALERT_RULES.name
    return found + [Query(name, r.get("alert") or r["record"], r["expr"]) for r in rules()]


def test_every_panel_and_alert_query_evaluates(prometheus: str, traffic: None) -> None:
    found = all_queries()
    assert found, "no dashboard or alert queries found"
    failures = []
    for q in found:
        try:
            query(prometheus, q.expr)
        except QueryError as exc:
            failures.append(f"{q.source} / {q.title}: {exc}")
    assert not failures, "\n".join(failures)


def test_core_panels_show_data(prometheus: str, traffic: None) -> None:
    core = [q for q in all_queries() if q.title in CORE_PANELS]
    assert {q.title for q in core} == CORE_PANELS, "a core panel is missing or renamed"

    def empty() -> list[str]:
        return [f"{q.source} / {q.title}: {q.expr}" for q in core if not has_data(prometheus, q)]

    missing = empty()
    deadline = time.monotonic() + TIMEOUT_S  # the processor's metrics follow the traffic
    while missing and time.monotonic() < deadline:
        time.sleep(1.0)
        missing = empty()
    assert not missing, "no data:\n" + "\n".join(missing)


def has_data(prometheus: str, q: Query) -> bool:
    """At least one series with a number (NaN: a ratio or quantile of nothing)."""
    return any(not math.isnan(float(s["value"][1])) for s in query(prometheus, q.expr))


def test_the_alert_rules_are_loaded_and_evaluate(prometheus: str, traffic: None) -> None:
    if not ALERT_RULES.is_file():
        pytest.skip(f"no {ALERT_RULES.name} in this checkout")
    names = {r.get("alert") or r["record"] for r in rules()}

    def evaluated() -> list[dict[str, Any]] | None:
        body = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()
        found = [r for g in body["data"]["groups"] for r in g["rules"]]
        return found if found and all(r["health"] != "unknown" for r in found) else None

    loaded = eventually(evaluated, "every rule evaluated once")
    assert {r["name"] for r in loaded} == names
    assert not [(r["name"], r.get("lastError")) for r in loaded if r["health"] == "err"]
