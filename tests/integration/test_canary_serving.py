"""Canaries in serving: the two adapter slots and their transitions on a fake engine, then
over the running stack: a conversation keeps its arm and version (body, headers and
logged events agree), both arms serve at 50%, an operator can pin an arm with the admin
key only, and aborting or promoting the canary under load fails no request (a promoted
canary is not reloaded). The registry is left as it was found."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from vllm.lora.request import LoRARequest

from livealign.stack import LocalStack
from serving.adapters import AdapterManager, Slot
from serving.canary import assign
from serving.protocol import APIError
from streaming.events import TOPIC_INTERACTIONS
from tests.integration.conftest import read_topic, with_ids
from tests.integration.test_hot_swap import SteadyLoad, publish
from trainer.registry import CorruptAdapter, Registry, RegistryState, Rollout

# --- the slots, on a fake engine and registry (no stack) --------------------------------


class FakeLLM:
    """What AdapterManager calls on vLLM's AsyncLLM: which adapters are loaded, by id."""

    def __init__(self) -> None:
        self.loaded: dict[int, str] = {}

    async def add_lora(self, lora: LoRARequest) -> bool:
        self.loaded[lora.lora_int_id] = lora.lora_name
        return True

    async def remove_lora(self, lora_id: int) -> None:
        del self.loaded[lora_id]


class FakeRegistry:
    """state.json as a settable attribute; versions in ``corrupt`` fail their checksums."""

    def __init__(self) -> None:
        self.now = RegistryState()
        self.corrupt: set[str] = set()

    def state(self) -> RegistryState:
        return self.now

    def verify(self, ref: str) -> SimpleNamespace:
        if ref in self.corrupt:
            raise CorruptAdapter(f"{ref}: adapter_model.safetensors checksum mismatch")
        return SimpleNamespace(ref=ref)

    def check_compatible(self, ref: str, base_config: dict[str, Any]) -> None:
        pass

    def path(self, ref: str) -> Path:
        return Path("/nonexistent") / ref


def fake_manager(tmp_path: Path) -> tuple[AdapterManager, FakeRegistry, FakeLLM]:
    (tmp_path / "config.json").write_text("{}")
    llm, registry = FakeLLM(), FakeRegistry()
    engine = SimpleNamespace(config=SimpleNamespace(model_path=str(tmp_path)), llm=llm)
    return AdapterManager(engine, registry, b"salt", drain_timeout_s=10), registry, llm  # type: ignore[arg-type]


def served(manager: AdapterManager, key: str, pin: str | None = None) -> tuple[str, str]:
    """(arm, adapter) a request of ``key`` gets (it is over at once)."""
    route, slot = manager.route(key, pin)
    slot.release()
    return route.arm, route.adapter


def held_on(manager: AdapterManager, arm: str) -> Slot:
    """A request in flight on ``arm`` (the caller releases its slot)."""
    for i in range(1000):
        route, slot = manager.route(f"conversation:held-{i}")
        if route.arm == arm:
            return slot
        slot.release()
    raise AssertionError(f"no key routed to {arm}")


def test_promotion_moves_the_canary_over_and_drains_the_old_stable(tmp_path: Path) -> None:
    async def scenario() -> None:
        manager, registry, llm = fake_manager(tmp_path)
        registry.now = RegistryState(stable="a@1", canary="a@2", canary_weight=0.5)
        await manager.sync()
        assert llm.loaded == {1: "a@1", 2: "a@2"}
        weight = REGISTRY.get_sample_value("livealign_canary_weight", {"adapter": "a@2"})
        assert weight == 0.5
        arms = {served(manager, f"conversation:{i}") for i in range(100)}
        assert arms == {("stable", "a@1"), ("canary", "a@2")}
        in_flight = held_on(manager, "stable")
        registry.now = RegistryState(stable="a@2")  # promoted
        sync = asyncio.create_task(manager.sync())
        await asyncio.sleep(0.05)
        assert served(manager, "conversation:x") == ("stable", "a@2")
        assert llm.loaded == {1: "a@1", 2: "a@2"}  # a@1 waits for its last request
        in_flight.release()
        await sync
        assert llm.loaded == {2: "a@2"}  # a@2 kept its id: moved, not reloaded
        assert manager.canary is None and manager.canary_weight == 0

    asyncio.run(scenario())


def test_a_rolled_back_canary_drains_and_a_refused_one_is_never_routed(tmp_path: Path) -> None:
    async def scenario() -> None:
        manager, registry, llm = fake_manager(tmp_path)
        registry.now = RegistryState(stable=None, canary="a@2", canary_weight=1.0)
        await manager.sync()
        in_flight = held_on(manager, "canary")
        registry.now = RegistryState()  # rolled back
        sync = asyncio.create_task(manager.sync())
        await asyncio.sleep(0.05)
        assert served(manager, "conversation:y") == ("stable", "base")
        assert llm.loaded == {1: "a@2"}  # its last request is still running
        in_flight.release()
        await sync
        assert llm.loaded == {}
        registry.corrupt.add("a@3")
        registry.now = RegistryState(canary="a@3", canary_weight=1.0)
        await manager.sync()
        assert "checksum" in manager.refused["a@3"] and manager.canary is None
        assert {served(manager, f"conversation:{i}")[0] for i in range(50)} == {"stable"}
        assert served(manager, "k", pin="stable") == ("pinned", "base")
        with pytest.raises(APIError) as refused:
            manager.route("k", pin="canary")
        assert refused.value.status == 409

    asyncio.run(scenario())


# --- over the running stack ---------------------------------------------------------------

N_CONVERSATIONS = 40
CHAT = {"model": "livealign", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def versions(
    stack: LocalStack,
    http: httpx.Client,
    registry: Registry,
    admin: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str]]:
    """(stable, canary), both published; the registry's state is put back afterwards."""
    before = registry.state()
    tmp = tmp_path_factory.mktemp("canary")
    stable = publish(registry, stack, tmp, seed=21)
    registry.set_state(stable=stable, canary=None, action="publish", reason="test")
    canary = publish(registry, stack, tmp, seed=22)
    yield stable, canary
    registry.set_state(
        stable=before.stable, canary=before.canary, action="rollback", reason="test: restore"
    )
    wait_replica(http, admin, before.stable or "base", before.canary, before.canary_weight)


@pytest.fixture
def trial(
    http: httpx.Client, registry: Registry, admin: dict[str, str], versions: tuple[str, str]
) -> tuple[str, str]:
    """(stable, canary) with the canary on trial at 50% (the policy's step 3, as the
    controller would leave it), loaded by serving."""
    now = int(time.time() * 1000)
    registry.set_state(
        canary=versions[1],
        canary_weight=0.5,
        rollout=Rollout(started_ms=now, step=3, step_started_ms=now),
        action="canary",
        reason="test",
    )
    wait_replica(http, admin, *versions, 0.5)
    return versions


def wait_replica(
    http: httpx.Client,
    admin: dict[str, str],
    stable: str,
    canary: str | None,
    weight: float,
    timeout: float = 60,
) -> None:
    """Until the replica routes to ``stable`` and ``canary`` at ``weight``."""
    deadline = time.monotonic() + timeout
    wanted = (stable, canary, weight)
    while True:
        replica = http.get("/admin/canary", headers=admin).json()["replica"]
        if (replica["stable"], replica["canary"], replica["canary_weight"]) == wanted:
            return
        assert time.monotonic() < deadline, f"replica {replica}, not {wanted}, after {timeout}s"
        time.sleep(0.3)


def post_chat(
    http: httpx.Client, conversation: str, stream: bool = False, **headers: str
) -> httpx.Response:
    body = {**CHAT, "conversation_id": conversation, "stream": stream}
    return http.post("/v1/chat/completions", json=body, headers=headers)


def chat(
    http: httpx.Client, conversation: str, stream: bool = False, **headers: str
) -> dict[str, Any]:
    """One turn's ``livealign`` object (of the first chunk if streamed), checked against
    the response headers."""
    r = post_chat(http, conversation, stream, **headers)
    assert r.status_code == 200, r.text
    first = r.text.split("\n\n")[0].removeprefix("data: ") if stream else r.text
    info: dict[str, Any] = json.loads(first)["livealign"]
    assert r.headers["X-LiveAlign-Arm"] == info["arm"]
    assert r.headers["X-LiveAlign-Adapter"] == info["adapter"]
    return info


def test_a_conversation_keeps_its_arm_and_both_arms_serve(
    stack: LocalStack, http: httpx.Client, trial: tuple[str, str]
) -> None:
    stable, canary = trial
    conversations = [f"conv-canary-{i}" for i in range(N_CONVERSATIONS)]
    with ThreadPoolExecutor(8) as pool:  # turn 1 answered whole, turn 2 streamed
        turns = list(pool.map(lambda c: [chat(http, c), chat(http, c, stream=True)], conversations))
    salt = stack.settings.serving_config(Path("."), "").user_hash_salt.get_secret_value().encode()
    for conversation, (first, second) in zip(conversations, turns, strict=True):
        assert (first["arm"], first["adapter"]) == (second["arm"], second["adapter"])
        key = assign.unit_key("conversation", conversation, None)
        on_canary = assign.on_canary(salt, canary, key, 0.5)
        assert (first["arm"], first["adapter"]) == (
            ("canary", canary) if on_canary else ("stable", stable)
        )
    assert {t[0]["arm"] for t in turns} == {"canary", "stable"}
    answers = {info["response_id"]: info for pair in turns for info in pair}
    events = read_topic(stack.bootstrap, TOPIC_INTERACTIONS, with_ids("response_id", set(answers)))
    logged = {e["response_id"]: (e["arm"], e["adapter"]) for e in events}
    assert {rid: logged.get(rid) for rid in answers} == {
        rid: (info["arm"], info["adapter"]) for rid, info in answers.items()
    }


def test_an_operator_pins_an_arm_with_the_admin_key_only(
    stack: LocalStack,
    http: httpx.Client,
    trial: tuple[str, str],
    admin_key: str,
) -> None:
    stable, canary = trial
    key = {"X-LiveAlign-Admin-Key": admin_key}
    pinned = [
        chat(http, "conv-pin", **{"X-LiveAlign-Arm": arm}, **key) for arm in ("canary", "stable")
    ]
    assert [(p["arm"], p["adapter"]) for p in pinned] == [("pinned", canary), ("pinned", stable)]
    refused = post_chat(http, "conv-pin", **{"X-LiveAlign-Arm": "canary"})
    assert refused.status_code == 403 and "X-LiveAlign-Admin-Key" in refused.text
    wrong = {"X-LiveAlign-Arm": "canary", "X-LiveAlign-Admin-Key": "x"}
    assert post_chat(http, "conv-pin", **wrong).status_code == 403
    assert post_chat(http, "conv-pin", **{"X-LiveAlign-Arm": "both"}, **key).status_code == 400
    ids = {p["response_id"] for p in pinned}
    events = read_topic(stack.bootstrap, TOPIC_INTERACTIONS, with_ids("response_id", ids))
    assert {e["arm"] for e in events if e["response_id"] in ids} == {"pinned"}
    metrics = http.get("/metrics").text
    assert f'livealign_chat_requests_total{{adapter="{canary}",arm="pinned"' in metrics
    assert f'livealign_canary_weight{{adapter="{canary}"}} 0.5' in metrics


def test_a_model_naming_a_loaded_version_is_answered_by_it_as_pinned(
    http: httpx.Client, trial: tuple[str, str]
) -> None:
    """What compare mode asks for: each version by its name, counted as neither arm."""
    for ref in trial:
        r = http.post("/v1/chat/completions", json={**CHAT, "model": ref})
        assert r.status_code == 200, r.text
        info = r.json()["livealign"]
        assert (info["arm"], info["adapter"]) == ("pinned", ref)
    unknown = http.post("/v1/chat/completions", json={**CHAT, "model": "livealign@999"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_compare_mode_puts_the_two_versions_side_by_side_unnamed_until_the_vote(
    stack: LocalStack, trial: tuple[str, str]
) -> None:
    """In the chat page, in Chromium: the two answers come from the stable and the canary
    version, in an order drawn at random (the draw fixed here, once each way), and which
    is which shows only after the vote."""
    pytest.importorskip("playwright")
    from tests.unit.chat_screenshot import ask
    from tests.unit.status_browser import chromium

    orders = []
    with chromium() as browser:
        for draw in (0.1, 0.9):
            page = browser.new_page()
            page.add_init_script(f"Math.random = () => {draw}")
            page.goto(stack.url)
            page.wait_for_load_state("networkidle")  # GET /v1/models: the versions
            page.click("[data-mode=compare]")
            ask(page, "Which is better?", 1)
            page.wait_for_selector(".answers.pair .answer[data-done]:nth-of-type(2)")
            headings = page.locator(".answers.pair .answer h2")
            assert headings.all_text_contents() == ["Answer A", "Answer B"]
            page.click("[data-verdict=better]")
            named = headings.all_text_contents()
            orders.append([h.split(": ", 1)[1].split(" (")[0] for h in named])
            page.close()
    assert sorted(orders[0]) == sorted(trial)
    assert orders[1] == orders[0][::-1]  # the draw, not the list, decides which is A


def test_the_canary_admin_api(
    http: httpx.Client, trial: tuple[str, str], admin: dict[str, str]
) -> None:
    stable, canary = trial
    assert http.get("/admin/canary").status_code == 401
    status = http.get("/admin/canary", headers=admin).json()
    assert (status["stable"], status["canary"], status["weight"]) == (stable, canary, 0.5)
    assert status["replica"]["canary"] == canary and isinstance(status["decisions"], list)
    r = http.post("/admin/canary/set-weight", headers=admin, json={"weight": 0.25})
    assert r.status_code == 200, r.text
    assert r.json()["weight"] == r.json()["replica"]["canary_weight"] == 0.25  # applied at once
    for bad in ({"weight": 0.3}, {"weight": "lots"}, {}):
        r = http.post("/admin/canary/set-weight", headers=admin, json=bad)
        assert r.status_code == 422 and r.json()["error"]["param"] == "weight", r.text
    assert http.post("/admin/canary/pause", headers=admin).json()["rollout"]["paused"] is True
    assert http.post("/admin/canary/resume", headers=admin).json()["rollout"]["paused"] is False


def command_under_load(
    stack: LocalStack, http: httpx.Client, admin: dict[str, str], command: str
) -> tuple[httpx.Response, float, list[tuple[int, str]]]:
    """POST /admin/canary/COMMAND while two clients chat (a new conversation each
    request), and a few requests after it: its answer, how long it took, every outcome."""
    with SteadyLoad(stack.url) as a, SteadyLoad(stack.url) as b:
        time.sleep(2)
        started = time.monotonic()
        r = http.post(f"/admin/canary/{command}", headers=admin)
        took = time.monotonic() - started
        seen, deadline = len(a.results), time.monotonic() + 30
        while len(a.results) < seen + 3 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert r.status_code == 200, r.text
    results = a.results + b.results
    assert results and all(status == 200 for status, _ in results), results
    return r, took, results


def test_abort_under_load_unloads_the_canary_and_fails_nothing(
    stack: LocalStack,
    http: httpx.Client,
    trial: tuple[str, str],
    admin: dict[str, str],
    admin_key: str,
) -> None:
    stable, canary = trial
    r, took, results = command_under_load(stack, http, admin, "abort")
    assert r.json()["canary"] is None and r.json()["replica"]["canary"] is None
    assert took < 10  # drained and unloaded before the answer
    assert {adapter for _, adapter in results} == {stable, canary}
    assert results[-1][1] == stable
    assert canary not in [m["id"] for m in http.get("/v1/models").json()["data"]]
    r = http.post("/admin/canary/abort", headers=admin)
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_canary"
    pin = {"X-LiveAlign-Arm": "canary", "X-LiveAlign-Admin-Key": admin_key}
    assert post_chat(http, "conv-pin", **pin).status_code == 409


def test_promote_under_load_moves_the_canary_to_stable_without_a_reload(
    stack: LocalStack,
    http: httpx.Client,
    trial: tuple[str, str],
    admin: dict[str, str],
) -> None:
    _, canary = trial
    loaded = http.get("/admin/canary", headers=admin).json()["replica"]["lora_ids"]
    r, _, results = command_under_load(stack, http, admin, "promote")
    assert (r.json()["stable"], r.json()["canary"]) == (canary, None)
    replica = r.json()["replica"]
    assert replica["stable"] == canary and replica["lora_ids"] == {canary: loaded[canary]}
    assert results[-1][1] == canary
