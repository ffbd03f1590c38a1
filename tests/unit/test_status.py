"""The status page's JSON: assembled from plain values (pure), read from a real registry
folder and SQLite store one part at a time, made once per cache period and never more
than once at a time, and served by the app on the fakes (tests/unit/serving_app.py) with
a day of realistic data (tests/unit/status_data.py). The page in a browser:
test_status_page.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import threading
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.app import api
from serving.canary.outcomes import summarize
from serving.config import StatusConfig
from serving.protocol import APIError
from serving.status.assemble import (
    GATE_METRICS,
    Sources,
    canary,
    events,
    feedback,
    live,
    role,
    round_,
    series,
)
from serving.status.board import StatusBoard, page
from serving.status.models import Decision, StatusReport
from serving.status.sources import StatusSources
from streaming import store as s
from streaming.kinds import FeedbackKind
from streaming.store import PreferenceStore
from tests.unit import status_data
from tests.unit.serving_app import serving
from trainer.registry import Registry, RegistryState, Rollout, StateChange
from trainer.registry.files import TAIL_BLOCK, last_lines

ROOT = Path(__file__).resolve().parents[2]


def change(
    ts: int, action: str, ref: str | None, stable: str | None, canary: str | None
) -> StateChange:
    return StateChange(ts_ms=ts, action=action, ref=ref, stable=stable, canary=canary)


# --- assembly (pure) ----------------------------------------------------------------------
def test_a_versions_role_is_what_it_is_now_or_what_became_of_it() -> None:
    state = RegistryState(
        stable="m@3",
        canary="m@5",
        history=[
            change(1, "publish", "m@1", None, "m@1"),
            change(2, "promote", "m@1", "m@1", None),
            change(3, "publish", "m@2", "m@1", "m@2"),
            change(4, "rollback", "m@2", "m@1", None),
            change(5, "publish", "m@3", "m@1", "m@3"),
            change(6, "promote", "m@3", "m@3", None),
            change(7, "publish", "m@5", "m@3", "m@5"),
        ],
    )
    got = {ref: role(ref, state) for ref in ("m@1", "m@2", "m@3", "m@4", "m@5")}
    assert got == {
        "m@1": "retired",
        "m@2": "rolled_back",
        "m@3": "stable",
        "m@4": "published",
        "m@5": "canary",
    }


def test_live_scores_pool_the_buckets_by_their_answers() -> None:
    buckets = [("a", 0, 10, 0.5), ("a", 3, 30, -0.1), ("b", 0, 5, 1.0)]
    pooled = live("a", buckets)
    assert pooled.answers == 40 and pooled.mean == pytest.approx((5 - 3) / 40)
    assert live("c", buckets).model_dump() == {"answers": 0, "mean": None}
    points = series(buckets, since_ms=1_000, bucket_ms=100)
    assert [(p.adapter, p.start_ms, p.answers) for p in points] == [
        ("a", 1_000, 10), ("a", 1_300, 30), ("b", 1_000, 5),
    ]  # fmt: skip


def outcome(conv: str, arm: str, adapter: str, score: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "conversation_id": conv, "arm": arm, "adapter": adapter, "score": score,
        "error": False, "thumbs_down": 0, "regenerated": False, "completion_tokens": 10,
        "latency_ms": 1000.0, "ttft_ms": 100.0, **extra,
    }  # fmt: skip


def decision(about: str) -> Decision:
    return Decision(
        ts_ms=9, canary=about, action="hold", reason="step_minimum", message="wait",
        estimate=0.1, lower=-0.2, upper=0.4, n_canary=2, n_stable=3,
    )  # fmt: skip


def test_the_canary_shows_its_arms_and_only_a_decision_about_itself() -> None:
    trial = Rollout(started_ms=100, step=2, step_started_ms=200)
    state = RegistryState(stable="m@1", canary="m@2", canary_weight=0.25, rollout=trial)
    rows = [
        outcome("c1", "canary", "m@2", 0.5),
        outcome("c1", "canary", "m@2", 0.1),  # one conversation: (0.5 + 0.1) / 2
        outcome("c2", "canary", "m@2", None, error=True),
        outcome("c3", "stable", "m@1", -0.2, thumbs_down=1),
        outcome("c4", "stable", "m@1", 0.4, regenerated=True),
    ]
    shown = canary(state, summarize(rows, "m@2", "m@1", {}), decision("m@1"))
    assert shown is not None and shown.decision is None  # about an earlier canary
    arms = {a.arm: a for a in shown.arms}
    assert (arms["canary"].share, arms["stable"].share) == (0.25, 0.75)
    assert arms["canary"].conversations == 1
    assert arms["canary"].mean_score == pytest.approx(0.3)
    assert arms["canary"].error_rate == pytest.approx(1 / 3)
    assert arms["stable"].mean_score == pytest.approx(0.1)
    assert arms["stable"].thumbs_down_rate == arms["stable"].regenerate_rate == 0.5
    assert (shown.step, shown.started_ms, shown.step_started_ms) == (2, 100, 200)
    assert canary(state, None, decision("m@2")).decision == decision("m@2")  # type: ignore[union-attr]
    assert canary(RegistryState(stable="m@1"), None, decision("m@1")) is None


def test_feedback_rates_cover_every_kind_in_the_tables_order() -> None:
    config = StatusConfig(feedback_window_s=600)
    rates = feedback(config, 200, {"thumb": 50, "dwell": 120})
    assert [k.kind for k in rates.kinds] == [k.value for k in FeedbackKind]
    got = {k.kind: (k.events, k.per_answer) for k in rates.kinds}
    assert got["thumb"] == (50, 0.25) and got["dwell"] == (120, 0.6)
    assert got["rating"] == (0, 0.0)
    assert (rates.answers, rates.window_s) == (200, 600)
    assert {k.per_answer for k in feedback(config, 0, {}).kinds} == {None}


def test_a_round_shows_its_gate_and_a_failure_only_its_errors_type() -> None:
    metrics = {"win_rate": 0.6, "pref_accuracy": 0.7, "dpo_loss": 0.5, "policy_steps": 9.0}
    checks = [{"name": "win_rate", "decision": "failed"}, {"name": "length", "decision": "passed"}]
    rejected = round_({"outcome": "rejected", "started_ms": 5, "reasons": ["win rate low"],
                       "metrics": metrics, "checks": checks, "n_pairs": 3})  # fmt: skip
    assert rejected is not None
    assert rejected.reasons == ["win rate low"]
    assert rejected.checks == {"win_rate": "failed", "length": "passed"}
    assert list(rejected.gate) == [k for k in GATE_METRICS if k in metrics]  # no losses
    assert (rejected.n_pairs, rejected.n_labels, rejected.version) == (3, 0, None)
    failed = round_({"outcome": "failed", "started_ms": 5,
                     "reasons": ["OSError: [Errno 28] /home/ops/var/work: no space"]})  # fmt: skip
    assert failed is not None and failed.reasons == ["OSError"]
    assert round_({"started_ms": 5}) is None  # a line this version cannot read


def test_events_are_the_windows_latest_changes() -> None:
    history = [change(t, "canary_step", None, "m@1", "m@2") for t in (10, 20, 30, 40)]
    assert [e.ts_ms for e in events(history, since_ms=15, most=2)] == [30, 40]
    assert [e.ts_ms for e in events(history, since_ms=15, most=10)] == [20, 30, 40]
    assert events(history, since_ms=0, most=0) == []


# --- the store's queries and the logs' tails ------------------------------------------------
def test_score_buckets_and_feedback_counts_read_only_what_they_say(tmp_path: Path) -> None:
    store = PreferenceStore(f"sqlite:///{tmp_path / 'p.sqlite'}")
    since, bucket = 10_000, 1_000

    def row(rid: str, adapter: str, created: int, score: float | None) -> dict[str, Any]:
        return {
            "response_id": rid,
            "created_ms": created,
            "confidence": 0.5,
            "n_signals": 1,
            "thumbs_up": 0,
            "updated_ms": created,
            **outcome("c", "stable", adapter, score),
        }

    def answer(rid: str, created: int, settled: bool) -> dict[str, Any]:
        return {"response_id": rid, "conversation_id": "c", "prompt_hash": "0" * 64,
                "user_hash": None, "adapter": "a", "arm": "stable", "created_ms": created,
                "event": {}, "calibrated": settled}  # fmt: skip

    def fb(rid: str, kind: str, status: str, n: int) -> dict[str, Any]:
        return {"event_id": f"{rid}-{kind}-{n}", "response_id": rid, "rater": None,
                "kind": kind, "received_ms": 1, "status": status, "status_reason": None,
                "signal": None, "event": {}}  # fmt: skip

    with store.transaction() as tx:
        store.upsert(tx, s.outcomes, [
            row("r1", "a", since + 100, 0.2), row("r2", "a", since + 900, 0.6),
            row("r3", "a", since + 2_500, -0.4), row("r4", "a", since + 2_600, None),
            row("r5", "a", since - 1, 1.0), row("r6", "b", since + 100, 1.0),
        ])  # fmt: skip
        store.upsert(tx, s.interactions, [
            answer("i1", since + 1, True), answer("i2", since + 2, True),
            answer("i3", since + 3, False), answer("i4", since - 1, True),
        ])  # fmt: skip
        store.upsert(tx, s.feedback, [
            fb("i1", "thumb", "joined", 0), fb("i1", "dwell", "joined", 0),
            fb("i2", "thumb", "joined", 0), fb("i2", "thumb", "dropped", 1),
            fb("i3", "thumb", "joined", 0), fb("i4", "thumb", "joined", 0),
        ])  # fmt: skip
    got = sorted(store.score_buckets(["a"], since, bucket))
    assert [(a, b, n) for a, b, n, _ in got] == [("a", 0, 2), ("a", 2, 1)]
    assert [mean for *_, mean in got] == pytest.approx([0.4, -0.4])
    assert store.score_buckets([], since, bucket) == []
    assert store.feedback_on_settled(since) == (2, {"thumb": 2, "dwell": 1})
    assert store.fusion_weights() is None
    store.close()


def test_the_tail_of_a_log_is_read_from_its_end_exactly(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    lines = [f'{{"n": {i}, "pad": "{"x" * (i % 97)}"}}' for i in range(5_000)]
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 3 * TAIL_BLOCK
    for n in (1, 7, 3_000, 10_000):
        assert last_lines(path, n) == lines[-n:]
    assert last_lines(path, 0) == []
    path.write_text("one\ntwo")  # no newline after the last line
    assert last_lines(path, 1) == ["two"]
    registry = Registry(tmp_path / "registry")
    for i in range(30):
        registry.append_decision({"i": i})
    assert (
        registry.decisions(last=3) == registry.decisions()[-3:] == [{"i": i} for i in (27, 28, 29)]
    )


# --- the sources: one part at a time ---------------------------------------------------------
REPLICA: dict[str, Any] = {"stable": "base", "canary": None, "canary_weight": 0.0, "refused": {}}


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Registry, str]:
    """The day of status_data in a registry folder and a store, written once."""
    root = tmp_path_factory.mktemp("day")
    url = f"sqlite:///{root / 'preferences.sqlite'}"
    store = PreferenceStore(url)
    registry = Registry(root / "registry")
    status_data.fill(root / "adapters", registry, store)
    store.close()
    return root, registry, url


def test_a_part_that_cannot_be_read_is_named_and_the_rest_shown(
    day: tuple[Path, Registry, str], tmp_path: Path
) -> None:
    _, registry, url = day
    broken = Registry(tmp_path / "broken")
    (broken.root / "state.json").write_text("{")  # a torn or hand-edited state.json
    src = StatusSources(StatusConfig(), broken, url).read(REPLICA, status_data.NOW_MS)
    assert src.problems == ["registry: unreadable (RegistryError; see the serving log)"]
    assert src.feedback is not None and src.feedback[0] > 0 and src.fusion is not None
    nowhere = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'p.sqlite'}"
    src = StatusSources(StatusConfig(), registry, nowhere).read(REPLICA, status_data.NOW_MS)
    assert src.problems == ["preference store: unreadable (OperationalError; see the serving log)"]
    assert src.state is not None and src.state.canary == "livealign@5" and src.rounds
    assert str(tmp_path) not in str(src.problems)  # the page is public: no paths


# --- the board: cached, one at a time, bounded -------------------------------------------------
class CountedSources:
    """Reads nothing; counts the reads, each blocked until ``go`` is set."""

    def __init__(self) -> None:
        self.reads = 0
        self.go = threading.Event()
        self.go.set()

    def read(self, replica: Mapping[str, Any], now_ms: int) -> Sources:
        self.reads += 1
        self.go.wait(30)
        return Sources(now_ms=now_ms, replica=replica)


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


def board(config: StatusConfig) -> tuple[StatusBoard, CountedSources, Clock]:
    sources, clock = CountedSources(), Clock()
    return StatusBoard(config, sources, clock), sources, clock  # type: ignore[arg-type]


def test_one_report_is_made_per_cache_period_however_many_ask() -> None:
    b, sources, clock = board(StatusConfig(cache_s=5))

    async def ask(n: int) -> list[StatusReport]:
        return list(await asyncio.gather(*(b.report(REPLICA) for _ in range(n))))

    first = asyncio.run(ask(8))
    assert sources.reads == 1 and all(r is first[0] for r in first)
    clock.ms += 4_999
    assert asyncio.run(ask(3))[0] is first[0] and sources.reads == 1
    clock.ms += 1
    assert asyncio.run(ask(3))[0].generated_ms == clock.ms and sources.reads == 2


def test_a_read_slower_than_the_timeout_is_a_503_and_never_a_second_read() -> None:
    b, sources, _ = board(StatusConfig(cache_s=5, timeout_s=0.05))
    sources.go.clear()

    async def scenario() -> None:
        for _ in range(3):
            with pytest.raises(APIError) as refused:
                await b.report(REPLICA)
            assert refused.value.status == 503
        assert sources.reads == 1  # the pages asking again wait for the same read
        sources.go.set()
        assert (await b.report(REPLICA)).generated_ms == 1_000_000
        assert sources.reads == 1

    asyncio.run(scenario())


# --- the routes, on the fakes ---------------------------------------------------------------------
@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, Any]]:
    with serving(tmp_path, StatusConfig(cache_s=0)) as server:
        store = PreferenceStore(server.config.store_url)
        status_data.fill(tmp_path / "adapters", server.adapters.registry, store)
        store.close()
        status_data.follow(server.adapters, server.adapters.registry)
        server.board.clock = lambda: status_data.NOW_MS
        yield TestClient(api), server


def test_the_json_has_the_days_numbers(client: tuple[TestClient, Any]) -> None:
    http, server = client
    answer = http.get("/v1/status")
    assert answer.status_code == 200, answer.text
    report = StatusReport.model_validate(answer.json())
    assert report.problems == []
    assert [v.ref for v in report.versions] == [f"livealign@{i}" for i in (5, 4, 3, 2, 1)]
    assert [v.role for v in report.versions] == [
        "canary", "stable", "retired", "rolled_back", "retired",
    ]  # fmt: skip
    assert (report.serving.stable, report.serving.canary) == ("livealign@4", "livealign@5")
    # Each version's live score, against the store's rows counted here in Python.
    store = PreferenceStore(server.config.store_url)
    since = status_data.NOW_MS - 24 * status_data.HOUR
    rows = [r for r in store.all(s.outcomes) if r["created_ms"] > since and r["score"] is not None]
    for v in report.versions:
        mine = [r["score"] for r in rows if r["adapter"] == v.ref]
        assert v.live.answers == len(mine) > 0
        assert v.live.mean == pytest.approx(sum(mine) / len(mine))
    assert sum(p.answers for p in report.series) == len(rows)
    # Feedback: the settled answers of the last hour, and the joined events on them.
    hour_ago = status_data.NOW_MS - 3_600_000
    settled = {
        r["response_id"]
        for r in store.all(s.interactions)
        if r["calibrated"] and r["created_ms"] > hour_ago
    }
    joined = [
        r for r in store.all(s.feedback) if r["response_id"] in settled and r["status"] == "joined"
    ]
    store.close()
    assert report.feedback is not None and report.feedback.answers == len(settled)
    for rate in report.feedback.kinds:
        assert rate.events == sum(r["kind"] == rate.kind for r in joined)
    assert report.canary is not None and report.canary.weight == 0.25
    assert report.canary.decision is not None and report.canary.decision.action == "hold"
    assert {a.arm: a.adapter for a in report.canary.arms} == {
        "stable": "livealign@4", "canary": "livealign@5",
    }  # fmt: skip
    assert report.fusion is not None and set(report.fusion.weights) == {
        "safety", "open_domain", "general",
    }  # fmt: skip
    assert [r.outcome for r in report.rounds][:2] == ["skipped", "published"]
    assert "/home" not in answer.text  # the failed round's path stayed in the log


def test_the_page_allows_itself_and_nothing_else(client: tuple[TestClient, Any]) -> None:
    http, _ = client
    answer = http.get("/status")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    html = answer.content
    script = re.search(rb"<script>(.*?)</script>", html, re.S)
    assert script is not None
    digest = base64.b64encode(hashlib.sha256(script.group(1)).digest()).decode()
    policy = answer.headers["content-security-policy"]
    assert f"script-src 'sha256-{digest}'" in policy and "connect-src 'self'" in policy
    assert "default-src 'none'" in policy
    # Nothing off the machine: the one absolute URL is the SVG namespace, not a fetch.
    assert set(re.findall(rb"https?://[^\s\"'`<>]+", html)) == {b"http://www.w3.org/2000/svg"}


def test_off_is_a_404_on_both_routes(tmp_path: Path) -> None:
    with serving(tmp_path, StatusConfig(enabled=False)):
        http = TestClient(api)
        for path in ("/status", "/v1/status"):
            answer = http.get(path)
            assert answer.status_code == 404
            assert answer.json()["error"]["message"].startswith("the status page is off")


def test_an_installed_package_has_the_page() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["serving"]
    assert any(Path("static/status.html").match(p) for p in patterns)
    assert page().html.startswith(b"<!doctype html>")
