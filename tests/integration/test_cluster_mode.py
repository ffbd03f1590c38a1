"""What only a cluster needs, run on this machine: the parts configured exactly as the Helm
chart configures them (its rendered environment and its secrets folder, nothing else), the
store on a real PostgreSQL with two processors in one consumer group and the trainer
reading what they stored; and two serving replicas following one registry on a shared
folder, both switching to a new version and both unloading the old one."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from livealign.config import Settings
from livealign.stack import LocalStack, resolve_model
from streaming import store as s
from streaming.broker import free_port
from streaming.store import PreferenceStore
from tests.integration.test_hot_swap import make_adapter
from tests.integration.test_processor_integration import feedback, interaction, wait_for
from tests.unit import chart
from trainer.registry import DataWindow, Registry
from trainer.round import Trainer

# The variables a pod has besides the chart's (a Python that finds this checkout).
BASE_ENV = ("PATH", "PYTHONPATH", "LANG", "XDG_CACHE_HOME")


def chart_environment(stack: LocalStack, tmp: Path, store_url: str) -> dict[str, str]:
    """The processor container's environment as the chart renders it, and its secrets
    folder as the chart projects it, with only what must be local replaced: the broker,
    the model (the session's tiny one), the folders (a pod's volumes), the metrics address
    (127.0.0.1 here, 0.0.0.0 in a pod) and the consumer group (the session's own
    processor reads these topics too)."""
    objects = chart.render()
    env = chart.env_of(chart.processor_container(objects))
    folder = tmp / "secrets"
    folder.mkdir()
    values = {
        "feedback_secret": secrets.token_hex(32),
        "user_hash_salt": secrets.token_hex(16),
        "admin_key": secrets.token_urlsafe(24),
        "url": store_url,
    }
    for name, key in chart.secret_files(objects).items():
        (folder / name).write_text(values[key])
    local = {
        "LIVEALIGN_KAFKA": stack.bootstrap,
        "LIVEALIGN_MODEL": stack.settings.model,
        "LIVEALIGN_HOME": str(tmp / "home"),
        "LIVEALIGN_CACHE": str(stack.settings.cache),
        "LIVEALIGN_SECRETS_DIR": str(folder),
        "LIVEALIGN_API_KEYS_PATH": str(tmp / "api-keys" / "api_keys.json"),
        "LIVEALIGN_METRICS_HOST": "127.0.0.1",
        "LIVEALIGN_PROCESSOR_GROUP": f"cluster-{uuid.uuid4().hex[:8]}",
        "HOME": str(tmp),
    }
    assert set(local) <= set(env)  # replacing, not adding
    return {**env, **local}


def test_two_processors_and_the_trainer_share_postgresql_configured_as_the_chart_does(
    stack: LocalStack,
    postgres_url: str,
    send: Callable[..., None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = chart_environment(stack, tmp_path, postgres_url)
    env["LIVEALIGN_SETTLE_S"] = "1"  # feedback windows close at once (a test's knob)
    ports = [free_port(), free_port()]
    procs = []
    for i, port in enumerate(ports):
        child = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
        child.update(env, LIVEALIGN_PROCESSOR_METRICS_PORT=str(port))
        log = tmp_path / f"processor-{i}.log"
        with open(log, "ab") as out:  # no flag: settings from the environment and files only
            cmd = [sys.executable, "-m", "livealign.cli", "processor"]
            procs.append((subprocess.Popen(cmd, stdout=out, stderr=out, env=child), log))
    try:
        time.sleep(8)  # both join the group (Tansu takes half the session timeout)
        prefix = f"rc-{uuid.uuid4().hex[:8]}"
        n = 40
        for i in range(n):  # many conversations: both partitions get traffic
            rid, conv = f"{prefix}-{i}", f"{prefix}-conv-{i}"
            send(interaction(rid, conv, prompt=f"Question {i}?", text=f"Answer {i}."))
            send(feedback(f"e-{rid}", rid, conv, "edit", f"A better answer {i}.", f"ed-{i}"))
        store = PreferenceStore(postgres_url)

        def ours() -> list[str]:
            return [str(p["rejected_response_id"]) for p in store.all(s.pairs)]

        wait_for(lambda: len([r for r in ours() if r.startswith(prefix)]) == n, timeout=120)
        for proc, log in procs:
            assert proc.poll() is None, log.read_text()
            text = log.read_text()
            assert "partitions assigned: [(" in text, text  # each got a share
        # Each processor's metrics, where the chart's settings put them.
        for port in ports:
            r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            assert "livealign_processor_" in r.text
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            proc.wait(30)
    time.sleep(2)
    assert len([r for r in ours() if r.startswith(prefix)]) == n  # each stored once

    # The trainer, from the same environment: it reads the store the processors wrote.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.store_url == postgres_url  # from the secrets folder
    assert settings.feedback_secret is not None and settings.api_keys
    config = settings.trainer_config(resolve_model(settings), settings.kafka or "")
    assert config.store_url == postgres_url
    trainer = Trainer(config)
    assert trainer.new_records() >= n


def replica_metrics(targets: Path) -> dict[str, str]:
    """Each serving replica's own metrics, found as Prometheus finds them: replica -> text."""
    out = {}
    for path in sorted(targets.glob("serving-*.json")):
        [entry] = json.loads(path.read_text())
        [target] = entry["targets"]
        out[entry["labels"]["replica"]] = httpx.get(f"http://{target}/metrics", timeout=10).text
    return out


def gauge(text: str, name: str, adapter: str) -> float | None:
    prefix = f'{name}{{adapter="{adapter}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return None


def test_two_replicas_follow_one_shared_registry(stack: LocalStack, tmp_path: Path) -> None:
    """Two replicas of the chat app (Serve num_replicas=2, as the chart runs them) over one
    registry folder: a published version reaches both, and the next one replaces it in
    both, each unloading the old weights."""
    from ray import serve

    from serving.app import ChatServer

    shared, targets = tmp_path / "registry", tmp_path / "targets"
    config = stack.settings.serving_config(resolve_model(stack.settings), stack.bootstrap)
    config = config.model_copy(update={"registry_dir": shared, "metrics_targets_dir": targets})
    app = ChatServer.options(  # type: ignore[attr-defined]
        num_replicas=2, ray_actor_options={"num_cpus": 0.25}
    ).bind(config)
    serve.run(app, name="two-replicas", route_prefix="/two-replicas", blocking=False)
    try:
        wait_for(lambda: len(list(targets.glob("serving-*.json"))) == 2, timeout=300)
        registry = Registry(shared)
        base = resolve_model(stack.settings)
        window = DataWindow(from_ms=0, to_ms=1, n_pairs=0, n_labels=0)
        refs = []
        for seed in (1, 2):
            adapter = make_adapter(base, tmp_path / f"adapter-{seed}", seed)
            parent = registry.state().stable
            new = registry.publish(
                adapter, parent=parent, base_model=str(base), data_window=window, metrics={}
            ).ref
            registry.set_state(stable=new, action="publish", reason="test")  # as the trainer does
            refs.append(new)

            def switched(new: str = new) -> bool:
                texts = replica_metrics(targets).values()
                return len(texts) == 2 and all(
                    gauge(t, "livealign_served_adapter", new) == 1
                    and gauge(t, "livealign_loaded_adapter", new) == 1
                    for t in texts
                )

            wait_for(switched, timeout=120)
        old, new = refs
        # Both replicas: the old version no longer routed to, and its weights unloaded.
        wait_for(
            lambda: all(
                gauge(t, "livealign_loaded_adapter", old) == 0
                for t in replica_metrics(targets).values()
            ),
            timeout=120,
        )
        for text in replica_metrics(targets).values():
            assert gauge(text, "livealign_served_adapter", old) == 0
            assert gauge(text, "livealign_loaded_adapter", new) == 1
    finally:
        serve.delete("two-replicas")


def test_the_chat_app_from_the_charts_settings_requires_api_keys(
    stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """livealign.cluster:serving, the builder the RayService's Serve config names, with the
    chart's environment and secrets folder: API keys are on, the keys file is the mounted
    folder's (a key added there is taken without a restart), the admin key is the secret
    file's, and the replica's metrics are on the port the chart gives it."""
    from ray import serve

    from livealign import cluster
    from serving import auth

    env = chart_environment(stack, tmp_path, "sqlite:///" + str(tmp_path / "prefs.sqlite"))
    metrics_port = free_port()
    env["LIVEALIGN_SERVING_METRICS_PORT"] = str(metrics_port)
    keys_file = Path(env["LIVEALIGN_API_KEYS_PATH"])
    keys_file.parent.mkdir()
    alice = auth.add_key(keys_file, "alice")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    admin_key = (Path(env["LIVEALIGN_SECRETS_DIR"]) / "livealign_admin_key").read_text()
    serve.run(cluster.serving({}), name="from-env", route_prefix="/from-env", blocking=False)
    try:
        url = f"{stack.url}/from-env"

        def models(key: str | None) -> int:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return httpx.get(f"{url}/v1/models", headers=headers, timeout=30).status_code

        wait_for(lambda: httpx.get(f"{url}/healthz", timeout=10).status_code == 200, 300)
        assert models(None) == 401
        assert models(alice) == 200
        bob = auth.add_key(keys_file, "bob")  # the Secret updated: the file replaced
        wait_for(lambda: models(bob) == 200, timeout=30)
        admin = {"Authorization": f"Bearer {admin_key}"}
        assert httpx.get(f"{url}/admin/adapters", headers=admin, timeout=30).status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert "livealign_served_adapter" in metrics
    finally:
        serve.delete("from-env")
