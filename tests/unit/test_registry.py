"""Adapter registry: publish/verify, crash safety, compatibility, state, concurrency."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from trainer import registry as reg
from trainer.registry import (
    CorruptAdapter,
    DataWindow,
    IncompatibleAdapter,
    Registry,
    RegistryError,
    UnknownVersion,
    check_adapter_dir,
    combined_digest,
    sha256_file,
)
from trainer.registry import versions as reg_versions

HIDDEN = 64
BASE: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": HIDDEN,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
}
WINDOW = DataWindow(from_ms=1_000, to_ms=2_000, n_pairs=10, n_labels=5)
KEY = "base_model.model.model.layers.0.self_attn.{}.lora_{}.weight"


def make_adapter(
    d: Path,
    *,
    hidden: int = HIDDEN,
    r: int = 8,
    peft_type: str = "LORA",
    targets: list[str] | str | None = None,
) -> Path:
    """A small PEFT-like adapter dir (safetensors written via numpy: same format, no torch)."""
    d.mkdir(parents=True)
    targets = ["q_proj", "v_proj"] if targets is None else targets
    cfg = {
        "peft_type": peft_type,
        "r": r,
        "lora_alpha": 16,
        "target_modules": targets,
        "base_model_name_or_path": "x",
    }
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    tensors = {}
    for m in ("q_proj", "v_proj"):
        tensors[KEY.format(m, "A")] = np.ones((r, hidden), dtype=np.float32)
        tensors[KEY.format(m, "B")] = np.zeros((hidden, r), dtype=np.float32)
    save_file(tensors, str(d / "adapter_model.safetensors"))
    (d / "tokenizer_config.json").write_text("{}")
    return d


def publish(r: Registry, src: Path, parent: str | None = None) -> reg.Manifest:
    return r.publish(src, parent=parent, base_model="smollm2", data_window=WINDOW, metrics={})


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_adapter(tmp_path / "src")


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "reg")


def visible(r: Registry) -> list[str]:
    return sorted(p.name for p in r.root.iterdir() if not p.name.startswith("."))


def test_publish_writes_complete_manifest_and_verifies(registry: Registry, src: Path) -> None:
    m = registry.publish(
        src,
        parent=None,
        base_model="smollm2",
        data_window=WINDOW,
        metrics={"pref_acc": 0.7},
        notes="first",
    )
    assert (m.name, m.version, m.ref, m.parent) == ("livealign", 1, "livealign@1", None)
    assert m.base_model == "smollm2" and m.data_window == WINDOW and m.notes == "first"
    assert m.metrics == {"pref_acc": 0.7}
    assert set(m.files) == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer_config.json",
    }
    d = registry.path("livealign@1")
    assert d == registry.root / "livealign@1"
    for name, digest in m.files.items():
        assert sha256_file(d / name) == sha256_file(src / name) == digest
    assert m.sha256 == combined_digest(m.files)
    on_disk = json.loads((d / "manifest.json").read_text())
    assert on_disk["ref"] == "livealign@1" and on_disk["sha256"] == m.sha256
    assert registry.verify("livealign@1") == m == registry.get("1")
    assert visible(registry) == ["livealign@1"]


def test_versions_increment_and_record_parent(registry: Registry, src: Path) -> None:
    assert registry.versions() == [] and registry.latest() is None
    m1 = publish(registry, src)
    m2 = publish(registry, src, parent=m1.ref)
    m3 = publish(registry, src, parent="2")  # plain number accepted, stored as a full ref
    assert [m.version for m in registry.versions()] == [1, 2, 3]
    assert (m2.parent, m3.parent) == ("livealign@1", "livealign@2")
    assert registry.latest() == m3
    with pytest.raises(UnknownVersion):
        publish(registry, src, parent="livealign@9")


def test_flipped_byte_is_corrupt_and_named(registry: Registry, src: Path) -> None:
    publish(registry, src)
    weights = registry.path("livealign@1") / "adapter_model.safetensors"
    weights.chmod(0o644)  # published files are read-only
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptAdapter, match=r"adapter_model\.safetensors checksum mismatch"):
        registry.verify("livealign@1")


def test_missing_or_extra_file_is_corrupt(registry: Registry, src: Path) -> None:
    publish(registry, src)
    publish(registry, src)
    (registry.path("1") / "tokenizer_config.json").unlink()
    with pytest.raises(CorruptAdapter, match=r"missing file.*tokenizer_config\.json"):
        registry.verify("1")
    (registry.path("2") / "sneaky.bin").write_bytes(b"x")
    with pytest.raises(CorruptAdapter, match=r"not in the manifest: sneaky\.bin"):
        registry.verify("2")


def test_tampered_manifest_is_corrupt_and_skipped(registry: Registry, src: Path) -> None:
    publish(registry, src)
    publish(registry, src)
    manifest = registry.path("1") / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["files"]["adapter_config.json"] = "0" * 64
    manifest.chmod(0o644)
    manifest.write_text(json.dumps(doc))
    with pytest.raises(CorruptAdapter, match=r"manifest\.json invalid"):
        registry.get("1")
    assert [m.version for m in registry.versions()] == [2]


@pytest.mark.parametrize("fail_at", ["rename", "manifest"])
def test_crash_mid_publish_leaves_nothing_visible(
    registry: Registry, src: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    publish(registry, src)
    before = registry.versions()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("simulated crash")

    if fail_at == "rename":
        monkeypatch.setattr(reg_versions.os, "rename", boom)
    else:
        monkeypatch.setattr(reg_versions, "write_durably", boom)
    with pytest.raises(OSError, match="simulated crash"):
        publish(registry, src, parent="1")
    monkeypatch.undo()

    assert registry.versions() == before
    assert visible(registry) == ["livealign@1"]
    assert not any(p.name.startswith(".tmp-") for p in registry.root.iterdir())
    m = publish(registry, src, parent="1")
    assert m.version == 2 and registry.verify(m.ref) == m


def test_leftover_temp_dirs_and_junk_are_ignored_and_collected(
    registry: Registry, src: Path
) -> None:
    # A hard crash leaves a temp dir behind; an operator may leave junk.
    stale = registry.root / ".tmp-crashed"
    make_adapter(stale)
    old = time.time() - 7200
    os.utime(stale, (old, old))
    fresh = registry.root / ".tmp-inflight"
    fresh.mkdir()
    (registry.root / "livealign@1").mkdir()  # no manifest
    (registry.root / "notes.txt").write_text("hi")
    assert registry.versions() == [] and registry.latest() is None
    with pytest.raises(CorruptAdapter, match=r"manifest\.json unreadable"):
        registry.get("1")
    assert publish(registry, src).version == 2  # never renames onto an existing dir
    assert registry.gc_temp(older_than_s=3600) == 1
    assert not stale.exists() and fresh.exists()
    assert registry.gc_temp(older_than_s=0) == 1


def test_rejects_nonfinite_metrics_without_leaving_anything(registry: Registry, src: Path) -> None:
    with pytest.raises(ValueError, match="finite"):
        registry.publish(
            src, parent=None, base_model="b", data_window=WINDOW, metrics={"x": float("nan")}
        )
    assert visible(registry) == []
    assert not any(p.name.startswith(".tmp-") for p in registry.root.iterdir())


def test_publish_rejects_non_adapter_source(registry: Registry, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RegistryError, match="not a PEFT adapter"):
        publish(registry, empty)


def test_compatible_adapter_passes(registry: Registry, src: Path) -> None:
    publish(registry, src)
    registry.check_compatible("livealign@1", BASE)
    check_adapter_dir(src, {**BASE, "model_type": "qwen2"})
    check_adapter_dir(make_adapter(src.parent / "re", targets=r".*\.(q|v)_proj"), BASE)


@pytest.mark.parametrize(
    ("kwargs", "base", "match"),
    [
        ({"hidden": 32}, BASE, r"q_proj\.lora_A\.weight: in-features 32 != base hidden_size 64"),
        ({"targets": ["q_proj", "c_attn"]}, BASE, r"\['c_attn'\] do not exist in a llama"),
        ({"targets": "c_attn"}, BASE, "matches no llama module"),
        ({"r": 128}, BASE, "rank 128 is above max_rank 64"),
        ({"peft_type": "IA3"}, BASE, "peft_type is 'IA3', not LORA"),
        ({}, {**BASE, "num_hidden_layers": 0}, "layer 0 but the base model has 0 layers"),
    ],
)
def test_incompatible_adapters(
    registry: Registry, tmp_path: Path, kwargs: dict[str, Any], base: dict[str, Any], match: str
) -> None:
    m = publish(registry, make_adapter(tmp_path / "bad", **kwargs))
    with pytest.raises(IncompatibleAdapter, match=match):
        registry.check_compatible(m.ref, base)


def test_missing_adapter_config_is_incompatible(registry: Registry, src: Path) -> None:
    publish(registry, src)
    (registry.path("1") / "adapter_config.json").unlink()
    with pytest.raises(IncompatibleAdapter, match=r"adapter_config\.json missing"):
        registry.check_compatible("1", BASE)


def test_rank_limit_is_a_parameter(registry: Registry, src: Path) -> None:
    publish(registry, src)
    with pytest.raises(IncompatibleAdapter, match="rank 8 is above max_rank 4"):
        registry.check_compatible("1", BASE, max_rank=4)


def test_state_round_trip_with_history(registry: Registry, src: Path) -> None:
    assert registry.state().stable is None and registry.state().history == []
    for _ in range(3):
        publish(registry, src)
    registry.set_state(stable="livealign@1", action="init", reason="first")
    registry.set_state(canary="2", action="canary", reason="gate passed")
    registry.set_state(canary=None, action="rollback", reason="thumbs down")
    registry.set_state(canary="3", action="canary")
    s = registry.set_state(stable="livealign@3", action="promote", reason="canary won")
    assert (s.stable, s.canary) == ("livealign@3", None)  # promoting clears the canary

    reread = Registry(registry.root).state()
    assert reread == s
    assert [(h.action, h.ref) for h in reread.history] == [
        ("init", "livealign@1"),
        ("canary", "livealign@2"),
        ("rollback", "livealign@2"),
        ("canary", "livealign@3"),
        ("promote", "livealign@3"),
    ]
    assert reread.history[2].reason == "thumbs down"
    assert all(a.ts_ms <= b.ts_ms for a, b in zip(reread.history, reread.history[1:], strict=False))

    with pytest.raises(UnknownVersion):
        registry.set_state(canary="livealign@9", action="canary")
    with pytest.raises(RegistryError, match="both stable and canary"):
        registry.set_state(canary="3", action="canary")
    assert registry.state() == s  # failed changes leave no trace
    assert not any(p.name.startswith(".state-") for p in registry.root.iterdir())


@pytest.mark.parametrize("ref", ["livealign@9", "other@1", "abc", "0", "livealign@", "", "-1"])
def test_unknown_version(registry: Registry, src: Path, ref: str) -> None:
    publish(registry, src)
    with pytest.raises(UnknownVersion):
        registry.get(ref)
    with pytest.raises(UnknownVersion):
        registry.path(ref)
    with pytest.raises(UnknownVersion):
        registry.verify(ref)


def test_concurrent_publishes_get_distinct_versions(
    registry: Registry, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Widen the allocate-then-rename window so a missing lock would show up reliably.
    fsync_dir = reg_versions.fsync_dir

    def slow_fsync_dir(path: Path) -> None:
        time.sleep(0.01)
        fsync_dir(path)

    monkeypatch.setattr(reg_versions, "fsync_dir", slow_fsync_dir)
    results: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        try:
            other = Registry(registry.root)  # separate instances, as separate processes would be
            barrier.wait()
            results.append(publish(other, src).version)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert errors == []
    assert sorted(results) == [1, 2, 3, 4]
    assert [registry.verify(m.ref).version for m in registry.versions()] == [1, 2, 3, 4]
