"""Hot-swapping adapters in the running stack: under a steady stream of requests no
request fails and the responses after the swap report the new version; a corrupt
version is refused and the current one keeps serving; the admin API needs its key."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from livealign.stack import LocalStack
from trainer.registry import DataWindow, Registry


def make_adapter(base: Path, out: Path, seed: int) -> Path:
    """A real (random, non-zero) LoRA for the base model, as the trainer would save it."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    modules = ["q_proj", "v_proj"]
    config = LoraConfig(r=8, lora_alpha=16, target_modules=modules, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    return out


def publish(registry: Registry, stack: LocalStack, tmp: Path, seed: int) -> str:
    base = Path(stack.settings.cache_dir) / "tiny-llama"
    adapter = make_adapter(base, tmp / f"adapter-{seed}", seed)
    window = DataWindow(from_ms=0, to_ms=1, n_pairs=0, n_labels=0)
    state = registry.state()
    return registry.publish(
        adapter, parent=state.stable, base_model=str(base), data_window=window, metrics={}
    ).ref


class SteadyLoad:
    """One client sending chats back to back until stopped; records every outcome."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.results: list[tuple[int, str]] = []  # (status, adapter)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        messages = [{"role": "user", "content": "hi"}]
        body = {"model": "livealign", "messages": messages, "max_tokens": 8}
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                try:
                    r = client.post("/v1/chat/completions", json=body)
                    adapter = (
                        r.json().get("livealign", {}).get("adapter", "")
                        if r.status_code == 200
                        else ""
                    )
                    self.results.append((r.status_code, adapter))
                except httpx.HTTPError as exc:
                    self.results.append((0, repr(exc)))

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def wait_serving(http: httpx.Client, ref: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http.get("/healthz").json()["adapter"] == ref:
            return
        time.sleep(0.5)
    raise AssertionError(f"{ref} not served after {timeout}s")


def test_admin_api_needs_the_key(http: httpx.Client) -> None:
    assert http.get("/admin/adapters").status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert http.get("/admin/adapters", headers=bad).status_code == 403


def test_swap_under_load_fails_nothing_and_switches(
    stack: LocalStack, http: httpx.Client, registry: Registry, admin: dict[str, str], tmp_path: Path
) -> None:
    ref = publish(registry, stack, tmp_path, seed=1)
    with SteadyLoad(stack.url) as load:
        time.sleep(3)  # some requests on the current version first
        registry.set_state(stable=ref, action="publish", reason="test")  # as the trainer does
        wait_serving(http, ref)
        seen = len(load.results)
        deadline = time.monotonic() + 60
        while len(load.results) < seen + 5 and time.monotonic() < deadline:
            time.sleep(0.2)
    statuses = [status for status, _ in load.results]
    assert statuses and all(status == 200 for status in statuses), load.results
    adapters = [adapter for _, adapter in load.results]
    assert adapters[0] == "base" and adapters[-1] == ref
    first_new = adapters.index(ref)
    assert set(adapters[first_new:]) == {ref}  # once switched, never back
    listing = http.get("/admin/adapters", headers=admin).json()
    assert listing["serving"] == ref and listing["state"]["stable"] == ref
    assert [v["ref"] for v in listing["versions"]][-1] == ref
    models = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert ref in models


def test_corrupt_version_is_refused_and_current_keeps_serving(
    stack: LocalStack, http: httpx.Client, registry: Registry, admin: dict[str, str], tmp_path: Path
) -> None:
    current = http.get("/healthz").json()["adapter"]
    bad = publish(registry, stack, tmp_path, seed=2)
    weights = registry.path(bad) / "adapter_model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    r = http.post(f"/admin/adapters/{bad}/promote", headers=admin)
    assert r.status_code == 409 and "adapter_model.safetensors" in r.json()["error"]["message"]
    registry.set_state(stable=bad, action="publish", reason="test: a corrupt publish")
    time.sleep(5)  # the replica reads the registry every 2 s: it must refuse, not switch
    assert http.get("/healthz").json()["adapter"] == current
    chat: dict[str, Any] = http.post(
        "/v1/chat/completions",
        json={
            "model": "livealign",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 4,
        },
    ).json()
    assert chat["livealign"]["adapter"] == current
    assert bad in http.get("/admin/adapters", headers=admin).json()["refused"]
    # An operator rolls back to base: served at once, recorded in the history.
    r = http.post("/admin/adapters/base/rollback", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["serving"] == "base" and r.json()["state"]["stable"] is None
    assert r.json()["state"]["history"][-1]["action"] == "rollback"


def test_cli_lists_versions_with_the_stack_admin_key(stack: LocalStack, registry: Registry) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "livealign.cli", "adapters", "list", "--url", stack.url,
         "--home", str(stack.settings.home)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    listing = json.loads(out.stdout)
    assert [v["ref"] for v in listing["versions"]] == [v.ref for v in registry.versions()]
