"""bench/chaos.py's pure parts (the schedule, errors put down to fault windows, the
accounting of lost and duplicated feedback, the memory summary) and the simulated users'
feedback retries against a fake API. The bench itself runs the real stack: not here."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest

from bench.canary_live import Users
from bench.chaos import (
    OUTSIDE,
    FaultSpec,
    Sample,
    Window,
    account,
    attribute,
    lost_to,
    lost_to_broker,
    parse_schedule,
    rss_summary,
    start_of,
    window_of,
)


def test_schedule_is_parsed_in_time_order() -> None:
    specs = parse_schedule("replica@120, broker@20:15,processor@0")
    assert specs == [
        FaultSpec("processor", 0.0),
        FaultSpec("broker", 20.0, 15.0),
        FaultSpec("replica", 120.0),
    ]


@pytest.mark.parametrize("bad", ["disk@10", "broker", "broker@-1", "trainer@5:-2", "broker@x"])
def test_a_bad_schedule_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_schedule(bad)


def test_a_fault_that_ran_long_pushes_the_rest_back() -> None:
    assert start_of(100.0, 0.0, previous_end=50.0, gap_s=15.0) == (100.0, 0.0)  # on time
    start, late = start_of(100.0, 0.0, previous_end=130.0, gap_s=15.0)  # ran 45 s over
    assert (start, late) == (145.0, 45.0)
    assert start_of(200.0, late, previous_end=150.0, gap_s=15.0) == (245.0, 45.0)  # stays late


WINDOWS = [
    Window("broker", 100.0, 120.0),
    Window("replica", 200.0, 240.0),
    Window("trainer", 300.0, 300.0, "not injected: no round", injected=False),
]


def test_an_error_belongs_to_the_window_it_overlaps() -> None:
    assert window_of(105.0, 106.0, WINDOWS, slack=1.0) == "broker"
    assert window_of(190.0, 201.0, WINDOWS, slack=1.0) == "replica"  # sent before, failed in
    assert window_of(240.5, 241.0, WINDOWS, slack=1.0) == "replica"  # within the slack
    assert window_of(242.0, 243.0, WINDOWS, slack=1.0) == OUTSIDE
    assert window_of(300.0, 300.0, WINDOWS, slack=1.0) == OUTSIDE  # a fault not injected


def test_the_replica_window_wins_where_two_overlap() -> None:
    windows = [Window("broker", 0.0, 50.0), Window("replica", 40.0, 60.0)]
    assert window_of(45.0, 46.0, windows, slack=0.0) == "replica"
    assert window_of(10.0, 46.0, windows[:1], slack=0.0) == "broker"


def test_errors_are_counted_per_window() -> None:
    calls = [(101.0, 102.0), (210.0, 211.0), (215.0, 216.0), (10.0, 11.0)]
    assert attribute(calls, WINDOWS, slack=1.0) == Counter(broker=1, replica=2, outside=1)


def test_a_lost_event_is_put_down_to_the_next_broker_kill() -> None:
    windows = [*WINDOWS, Window("broker", 400.0, 410.0)]
    accepted_at = [95.0, 99.0, 130.0, 205.0, 450.0]
    by = lost_to(accepted_at, windows, t0=50.0)
    assert by == {
        "broker@50s": {"n": 2, "oldest_s": 5.0},  # the kill at 100 (t0 at 50)
        "broker@350s": {"n": 2, "oldest_s": 270.0},  # 270 s: not the broker's doing, likely
        OUTSIDE: {"n": 1, "oldest_s": 0.0},  # after the last kill: another cause
    }
    assert lost_to_broker(by) == 4


def test_on_durable_storage_no_loss_is_put_down_to_a_broker_kill() -> None:
    windows = [*WINDOWS, Window("broker", 400.0, 410.0)]
    by = lost_to([95.0, 105.0, 450.0], windows, t0=50.0, broker_forgets=False)
    assert by == {"broker": {"n": 1, "oldest_s": 0.0}, OUTSIDE: {"n": 2, "oldest_s": 0.0}}
    assert lost_to_broker(by) == 0  # each one is LiveAlign's


def test_a_loss_after_the_last_broker_kill_is_labelled_by_its_window() -> None:
    assert lost_to([210.0], WINDOWS, t0=0.0) == {"replica": {"n": 1, "oldest_s": 0.0}}


def test_accounting_of_accepted_stored_and_delivered() -> None:
    accepted = ["a", "b", "c", "b"]  # b answered as accepted twice (a retry): one event
    stored = Counter({"a": 1, "b": 2, "x": 1})
    on_topic = Counter({"a": 1, "b": 3, "c": 2})
    d = account(accepted, stored, on_topic)
    assert d.accepted == 3
    assert d.exactly_once == 1  # a; b twice is not exactly once
    assert d.lost == ["c"]
    assert d.stored_twice == ["b"]
    assert d.stored_unacknowledged == 1  # x
    assert (d.topic_duplicates, d.topic_extra) == (2, 3)


def test_rss_of_the_longest_sampled_process_from_when_it_settled() -> None:
    mib = 2**20
    samples = [
        Sample("processor", 1, 0.0, 50 * mib),
        Sample("processor", 1, 40.0, 90 * mib),  # killed after this: 10 s settled
        Sample("processor", 2, 50.0, 20 * mib),  # still starting
        Sample("processor", 2, 90.0, 60 * mib),
        Sample("processor", 2, 150.0, 66 * mib),  # 60 s settled: the longest
        Sample("processor", 3, 160.0, 30 * mib),  # the last one, too short to tell
        Sample("processor", 3, 170.0, 31 * mib),
        Sample("broker", 7, 0.0, 10 * mib),
    ]
    summary = rss_summary(samples, settle_s=30.0)
    p = summary["processor"]
    assert (p["incarnations"], p["pid"]) == (3, 2)
    assert (p["start_mib"], p["end_mib"], p["growth_mib"]) == (60.0, 66.0, 6.0)
    assert p["growth_pct"] == pytest.approx(10.0) and p["seconds"] == 60.0
    assert p["mib_per_min"] == pytest.approx(6.0)
    b = summary["broker"]  # one sample: no growth to speak of
    assert (b["incarnations"], b["growth_mib"], b["seconds"]) == (1, 0.0, 0.0)


def test_of_equally_long_processes_the_latest_counts() -> None:
    samples = [Sample("x", 1, 0.0, 1), Sample("x", 1, 10.0, 2), Sample("x", 2, 20.0, 5),
               Sample("x", 2, 30.0, 9)]  # fmt: skip
    assert rss_summary(samples, settle_s=0.0)["x"]["pid"] == 2


# --- the users' feedback retries ------------------------------------------------------------
def users(handler: Any, retry_s: float = 30.0) -> tuple[Users, httpx.Client]:
    u = Users("http://test", concurrency=0, retry_s=retry_s)
    u.retry_every_s = 0.0
    return u, httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler))


def batch(*ids: str) -> list[dict[str, object]]:
    return [{"event_id": i, "kind": "dwell", "value": 1, "response_id": "r"} for i in ids]


def test_feedback_not_stored_is_sent_again_with_the_same_ids() -> None:
    bodies: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        ids = [e["event_id"] for e in json.loads(request.content)["events"]]
        bodies.append(ids)
        if len(bodies) == 1:  # e1 in, e2 not stored yet
            rejected = [{"index": 1, "status": 503, "error": "retry", "event_id": "e2"}]
            return httpx.Response(202, json={"accepted": ["e1"], "rejected": rejected})
        if len(bodies) == 2:
            raise httpx.ConnectError("replica gone")
        if len(bodies) == 3:
            return httpx.Response(503, text="no replica")  # the proxy's, not the API's
        return httpx.Response(202, json={"accepted": ids, "rejected": []})

    u, http = users(handler)
    u._feedback(http, batch("e1", "e2"))
    assert bodies == [["e1", "e2"], ["e2"], ["e2"], ["e2"]]
    assert [e for e, _ in u.accepted] == ["e1", "e2"]
    assert [(a.status, a.pending) for a in u.retries] == [(202, 1), (0, 1), (503, 1)]
    assert u.abandoned == []


def test_feedback_refused_for_good_is_not_sent_again() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        rejected = [{"index": 0, "status": 403, "error": "bad token"}]
        return httpx.Response(403, json={"accepted": [], "rejected": rejected})

    u, http = users(handler)
    u._feedback(http, batch("e1"))
    assert u.abandoned == [("e1", 403)] and u.accepted == [] and u.retries == []


def test_feedback_is_given_up_after_retry_s() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503, text="down")

    u, http = users(handler, retry_s=0.0)
    u._feedback(http, batch("e1", "e2"))
    assert len(calls) == 1 and sorted(u.abandoned) == [("e1", 503), ("e2", 503)]
