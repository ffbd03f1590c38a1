"""Versioned LoRA adapter registry: the on-disk format the trainer writes and serving reads.

Layout under ``root`` (one adapter name per root)::

    root/
      .lock                    fcntl lock: version allocation and state.json updates
      state.json               stable / canary refs and an append-only history
      livealign@1/             one immutable directory per version
        adapter_config.json    the PEFT adapter files, as PEFT saved them
        adapter_model.safetensors
        manifest.json          sha256 of every other file, plus one checksum over them all
      .tmp-<uuid>/             a publish in progress, or one that crashed: see gc_temp()

A version directory only ever appears through an atomic rename of a complete, fsynced temp
directory, so a reader never sees half a version. Every name starting with "." is internal
and ignored by readers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from safetensors import safe_open

__all__ = [
    "DEFAULT_MAX_RANK",
    "CorruptAdapter",
    "DataWindow",
    "IncompatibleAdapter",
    "Manifest",
    "Registry",
    "RegistryError",
    "RegistryState",
    "StateChange",
    "UnknownVersion",
    "check_adapter_dir",
    "combined_digest",
    "sha256_file",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATE = "state.json"
LOCK = ".lock"
TEMP_PREFIX = ".tmp-"
STATE_TEMP_PREFIX = ".state-"
ADAPTER_CONFIG = "adapter_config.json"
SAFETENSORS_WEIGHTS = "adapter_model.safetensors"
WEIGHT_FILES = (SAFETENSORS_WEIGHTS, "adapter_model.bin")
CHUNK = 1 << 20
DEFAULT_MAX_RANK = 64

_HEX64 = r"^[0-9a-f]{64}$"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# Module names of the Llama family (Mistral and Qwen2 use the same ones).
_LLAMA_MODULES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    | {"lm_head", "embed_tokens"}
)
MODULES_BY_MODEL_TYPE: dict[str, frozenset[str]] = {
    "llama": _LLAMA_MODULES,
    "mistral": _LLAMA_MODULES,
    "qwen2": _LLAMA_MODULES,
}
# A full module path per known module, to test a regex `target_modules` the way PEFT does.
_SAMPLE_PATHS = {
    **{m: f"model.layers.0.self_attn.{m}" for m in ("q_proj", "k_proj", "v_proj", "o_proj")},
    **{m: f"model.layers.0.mlp.{m}" for m in ("gate_proj", "up_proj", "down_proj")},
    "lm_head": "lm_head",
    "embed_tokens": "model.embed_tokens",
}
# Base-config sizes that fix a projection's input (lora_A) and output (lora_B) width. Only the
# ones that hold for every Llama-family config: q/k/v outputs depend on head_dim and GQA.
_IN_FEATURES = {
    "q_proj": "hidden_size",
    "k_proj": "hidden_size",
    "v_proj": "hidden_size",
    "gate_proj": "hidden_size",
    "up_proj": "hidden_size",
    "down_proj": "intermediate_size",
}
_OUT_FEATURES = {
    "o_proj": "hidden_size",
    "down_proj": "hidden_size",
    "gate_proj": "intermediate_size",
    "up_proj": "intermediate_size",
}
# "...layers.3.self_attn.q_proj.lora_A.weight" (PEFT may keep an adapter name before .weight).
_LORA_KEY = re.compile(r"([A-Za-z0-9_]+)\.lora_([AB])(?:\.[A-Za-z0-9_]+)?\.weight$")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class RegistryError(Exception):
    """Base of every registry error."""


class CorruptAdapter(RegistryError):
    """A version's files do not match its manifest, or the manifest cannot be read."""


class IncompatibleAdapter(RegistryError):
    """The adapter does not fit the base model (type, rank, modules or sizes)."""


class UnknownVersion(RegistryError):
    """No such version in this registry."""


class DataWindow(BaseModel):
    """Which training data went into a version."""

    from_ms: int = Field(ge=0, description="Earliest record timestamp used (epoch ms).")
    to_ms: int = Field(ge=0, description="Latest record timestamp used (epoch ms).")
    n_pairs: int = Field(ge=0, description="Preference pairs trained on (DPO).")
    n_labels: int = Field(ge=0, description="Unpaired desirable/undesirable labels (KTO).")

    @model_validator(mode="after")
    def _ordered(self) -> DataWindow:
        if self.to_ms < self.from_ms:
            raise ValueError(f"to_ms {self.to_ms} is before from_ms {self.from_ms}")
        return self


class Manifest(BaseModel):
    """manifest.json of one version: provenance plus a digest of every file."""

    name: str = Field(description="Adapter name, shared by every version in the registry.")
    version: int = Field(gt=0, description="Version number: 1, 2, 3... in publish order.")
    ref: str = Field(description='"<name>@<version>": the directory name and serving LoRA name.')
    parent: str | None = Field(
        description="Ref of the version this one was trained from; None for the first."
    )
    base_model: str = Field(
        min_length=1, description="Identifier (path or name) of the base model trained on."
    )
    created_ms: int = Field(ge=0, description="Publish time (epoch ms).")
    data_window: DataWindow = Field(description="The training data this version saw.")
    metrics: dict[str, float] = Field(description="Offline evaluation metrics from the gate.")
    files: dict[str, str] = Field(
        description="File name (relative to the version dir) -> sha256 hex; manifest excluded."
    )
    sha256: str = Field(
        pattern=_HEX64,
        description='sha256 over the sorted "filename:digest\\n" lines: one checksum per version.',
    )
    notes: str = Field(default="", description="Free text from the publisher.")

    @field_validator("metrics")
    @classmethod
    def _finite(cls, v: dict[str, float]) -> dict[str, float]:
        # JSON has no NaN/inf: pydantic would write null and the manifest would not load back.
        bad = sorted(k for k, x in v.items() if not math.isfinite(x))
        if bad:
            raise ValueError(f"metrics must be finite: {bad}")
        return v

    @field_validator("files")
    @classmethod
    def _safe_files(cls, v: dict[str, str]) -> dict[str, str]:
        # Plain names only, so a crafted manifest cannot point outside its directory.
        for name, digest in v.items():
            if name in ("", ".", "..", MANIFEST) or "/" in name or "\\" in name:
                raise ValueError(f"bad file name in manifest: {name!r}")
            if not re.match(_HEX64, digest):
                raise ValueError(f"bad sha256 for {name}: {digest!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.ref != f"{self.name}@{self.version}":
            raise ValueError(f"ref {self.ref!r} != {self.name}@{self.version}")
        if self.sha256 != combined_digest(self.files):
            raise ValueError("sha256 does not match the files listed")
        return self


class StateChange(BaseModel):
    """One entry of the state history."""

    ts_ms: int = Field(description="When the change was made (epoch ms).")
    action: str = Field(description='What was done, e.g. "canary", "promote", "rollback".')
    ref: str | None = Field(description="The version the change is about.")
    reason: str = Field(default="", description="Why, in words (for humans and audits).")
    stable: str | None = Field(default=None, description="Stable ref after the change.")
    canary: str | None = Field(default=None, description="Canary ref after the change.")


class RegistryState(BaseModel):
    """state.json: what serving should run."""

    stable: str | None = Field(default=None, description="Ref serving answers with by default.")
    canary: str | None = Field(default=None, description="Ref under canary test, if any.")
    history: list[StateChange] = Field(
        default_factory=list, description="Every change, oldest first; append-only."
    )


def sha256_file(path: Path) -> str:
    """sha256 hex of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def combined_digest(files: dict[str, str]) -> str:
    """The version checksum: sha256 over sorted "filename:digest\\n" lines."""
    lines = "".join(f"{name}:{files[name]}\n" for name in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _copy_and_hash(src: Path, dst: Path) -> str:
    """Copy src to a new file dst, fsync it, and return its sha256 (one read pass)."""
    h = hashlib.sha256()
    with src.open("rb") as fin, dst.open("xb") as fout:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()


def _errors(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or '-'}: {err['msg']}" for err in e.errors())


def _read_adapter_config(d: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((d / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise IncompatibleAdapter(f"{d.name}: {ADAPTER_CONFIG} missing or unreadable: {e}") from e
    if not isinstance(cfg, dict):
        raise IncompatibleAdapter(f"{d.name}: {ADAPTER_CONFIG} is not a JSON object")
    return cfg


def _text_config(base_config: dict[str, Any]) -> dict[str, Any]:
    # Multimodal configs nest the language model's sizes under text_config.
    inner = base_config.get("text_config")
    if "hidden_size" not in base_config and isinstance(inner, dict):
        return {**base_config, **inner}
    return base_config


def _rank_problems(cfg: dict[str, Any], max_rank: int) -> list[str]:
    r = cfg.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        return [f"r must be a positive integer, got {r!r}"]
    pattern = cfg.get("rank_pattern") or {}
    ranks = [r, *(x for x in pattern.values() if isinstance(x, int))]
    if max(ranks) > max_rank:
        return [f"rank {max(ranks)} is above max_rank {max_rank}"]
    return []


def _target_problems(cfg: dict[str, Any], base: dict[str, Any]) -> list[str]:
    model_type = base.get("model_type")
    known = MODULES_BY_MODEL_TYPE.get(str(model_type))
    targets = cfg.get("target_modules")
    if known is None:
        return []  # a model family we have no module table for: cannot judge, do not guess
    if isinstance(targets, str):
        if targets == "all-linear":
            return []
        # PEFT treats a string as a regex that must fullmatch a module path.
        try:
            hits = [m for m in known if re.fullmatch(targets, _SAMPLE_PATHS[m])]
        except re.error as e:
            return [f"target_modules regex {targets!r} is invalid: {e}"]
        return [] if hits else [f"target_modules regex {targets!r} matches no {model_type} module"]
    if not isinstance(targets, list) or not targets:
        return [f"target_modules must be a non-empty list or a regex, got {targets!r}"]
    # PEFT matches list entries as suffixes ("self_attn.q_proj" works): judge the last part.
    unknown = sorted({str(t) for t in targets if str(t).rsplit(".", 1)[-1] not in known})
    if unknown:
        return [f"target_modules {unknown} do not exist in a {model_type} model"]
    return []


def _tensor_shapes(weights: Path) -> dict[str, list[int]]:
    # framework="numpy" reads the header only and does not pull in torch.
    try:
        with safe_open(weights, framework="numpy") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # SafetensorError, OSError: the header cannot be parsed
        raise CorruptAdapter(f"{weights.parent.name}: {weights.name} unreadable: {e}") from e


def _shape_problems(weights: Path, base: dict[str, Any]) -> list[str]:
    shapes = _tensor_shapes(weights)
    problems: list[str] = []
    n_lora = 0
    layers = base.get("num_hidden_layers")
    for key, shape in sorted(shapes.items()):
        m = _LORA_KEY.search(key)
        if m is None:
            continue
        n_lora += 1
        module, ab = m.groups()
        if len(shape) != 2:
            problems.append(f"{key}: expected a 2-d tensor, got shape {shape}")
            continue
        # lora_A is (r, in_features); lora_B is (out_features, r).
        table, dim, side = (
            (_IN_FEATURES, shape[1], "in") if ab == "A" else (_OUT_FEATURES, shape[0], "out")
        )
        size_key = table.get(module)
        want = base.get(size_key) if size_key else None
        if isinstance(want, int) and dim != want:
            problems.append(f"{key}: {side}-features {dim} != base {size_key} {want}")
        li = _LAYER.search(key)
        if li and isinstance(layers, int) and int(li[1]) >= layers:
            problems.append(f"{key}: layer {li[1]} but the base model has {layers} layers")
    if n_lora == 0:
        problems.append(f"{weights.name} holds no lora_A/lora_B tensors")
    return problems


def check_adapter_dir(
    d: Path, base_config: dict[str, Any], *, max_rank: int = DEFAULT_MAX_RANK
) -> None:
    """Raise IncompatibleAdapter unless the PEFT adapter in `d` fits the base model.

    `base_config` is the base model's HF config.json as a dict. Works on any adapter
    directory, so serving can also check one that is not (yet) in a registry.
    """
    cfg = _read_adapter_config(d)
    base = _text_config(base_config)
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        raise IncompatibleAdapter(f"{d.name}: peft_type is {cfg.get('peft_type')!r}, not LORA")
    problems = _rank_problems(cfg, max_rank) + _target_problems(cfg, base)
    if (d / SAFETENSORS_WEIGHTS).is_file():
        problems += _shape_problems(d / SAFETENSORS_WEIGHTS, base)
    if problems:
        shown = problems[:5] + ([f"and {len(problems) - 5} more"] if len(problems) > 5 else [])
        raise IncompatibleAdapter(
            f"{d.name} does not fit base model ({base.get('model_type')}): " + "; ".join(shown)
        )


class Registry:
    """Versioned adapters under `root`; safe for several processes and threads at once."""

    def __init__(self, root: Path, name: str = "livealign") -> None:
        if not _NAME.match(name):
            raise ValueError(f"registry name {name!r} must match {_NAME.pattern}")
        self.root = Path(root)
        self.name = name
        self.root.mkdir(parents=True, exist_ok=True)
        self._dir_re = re.compile(rf"^{re.escape(name)}@([1-9][0-9]*)$")

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r}, name={self.name!r})"

    # ---- locking and naming -------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # flock locks belong to the open file description, so this excludes other threads
        # of this process as well as other processes. Not re-entrant: never nest.
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _version_of(self, ref: str) -> int:
        """Version number of "name@N" or "N"; UnknownVersion for anything else."""
        text = str(ref).strip()
        name, _, num = text.rpartition("@")
        if (name and name != self.name) or not num.isdigit() or int(num) < 1:
            raise UnknownVersion(f"{ref!r} is not a version of {self.name!r} (want {self.name}@N)")
        return int(num)

    def _dir(self, version: int) -> Path:
        return self.root / f"{self.name}@{version}"

    def _version_dirs(self) -> list[int]:
        """Version numbers of every `<name>@<N>` directory, valid or not, ascending."""
        found = []
        for p in self.root.iterdir():
            m = self._dir_re.match(p.name)
            if m and p.is_dir():
                found.append(int(m[1]))
        return sorted(found)

    def _read_manifest(self, version: int) -> Manifest:
        ref = f"{self.name}@{version}"
        try:
            m = Manifest.model_validate_json((self._dir(version) / MANIFEST).read_bytes())
        except OSError as e:
            raise CorruptAdapter(f"{ref}: {MANIFEST} unreadable: {e}") from e
        except ValidationError as e:
            raise CorruptAdapter(f"{ref}: {MANIFEST} invalid: {_errors(e)}") from e
        if m.ref != ref:
            raise CorruptAdapter(f"{ref}: {MANIFEST} describes {m.ref}")
        return m

    # ---- publishing ---------------------------------------------------------------------

    def _source_files(self, src: Path) -> list[str]:
        """Top-level files of a PEFT save dir (subdirs such as checkpoints are not copied)."""
        if not src.is_dir():
            raise RegistryError(f"adapter source {src} is not a directory")
        names = sorted(
            p.name
            for p in src.iterdir()
            if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
        )
        if ADAPTER_CONFIG not in names or not any(w in names for w in WEIGHT_FILES):
            raise RegistryError(
                f"{src} is not a PEFT adapter: needs {ADAPTER_CONFIG} and one of {WEIGHT_FILES}"
            )
        _read_adapter_config(src)  # fail before copying anything if it is not even JSON
        return names

    def publish(
        self,
        src: Path,
        *,
        parent: str | None,
        base_model: str,
        data_window: DataWindow,
        metrics: dict[str, float],
        notes: str = "",
    ) -> Manifest:
        """Publish the adapter in `src` as the next version and return its manifest.

        Files are copied into `.tmp-<uuid>` inside root (same filesystem, so the final
        rename is atomic), hashed and fsynced outside the lock; only version allocation,
        the manifest and the rename happen under it. On any error the temp dir is removed;
        after a hard crash it is left for gc_temp(), and no `<name>@<N>` ever appears.
        """
        names = self._source_files(Path(src))
        parent_ref = self.get(parent).ref if parent is not None else None
        tmp = self.root / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            files = {n: _copy_and_hash(Path(src) / n, tmp / n) for n in names}
            with self._locked():
                manifest = self._next_manifest(
                    files, parent_ref, base_model, data_window, metrics, notes
                )
                self._commit(tmp, manifest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("published %s (parent %s, sha256 %s)", manifest.ref, parent_ref, manifest.sha256)
        return manifest

    def _next_manifest(
        self,
        files: dict[str, str],
        parent: str | None,
        base_model: str,
        data_window: DataWindow,
        metrics: dict[str, float],
        notes: str,
    ) -> Manifest:
        """Build the manifest for the next free version number (caller holds the lock)."""
        # Count every `<name>@<N>` dir, even a broken one: renaming onto it would fail.
        version = max(self._version_dirs(), default=0) + 1
        return Manifest(
            name=self.name,
            version=version,
            ref=f"{self.name}@{version}",
            parent=parent,
            base_model=base_model,
            created_ms=int(time.time() * 1000),
            data_window=data_window,
            metrics=metrics,
            files=files,
            sha256=combined_digest(files),
            notes=notes,
        )

    def _commit(self, tmp: Path, manifest: Manifest) -> None:
        """Write the manifest, make the files read-only, fsync, rename into place."""
        _write_durably(tmp / MANIFEST, manifest.model_dump_json(indent=2).encode())
        for p in tmp.iterdir():
            p.chmod(0o444)  # versions are immutable; this catches accidental writes
        _fsync_dir(tmp)
        os.rename(tmp, self._dir(manifest.version))
        _fsync_dir(self.root)  # make the rename itself durable

    # ---- reading ------------------------------------------------------------------------

    def versions(self) -> list[Manifest]:
        """Every readable version, ascending. Broken ones are logged and skipped."""
        out = []
        for version in self._version_dirs():
            try:
                out.append(self._read_manifest(version))
            except CorruptAdapter as e:
                log.warning("registry %s: skipping %s", self.root, e)
        return out

    def get(self, ref: str) -> Manifest:
        """Manifest of "name@N" (or "N"). UnknownVersion if absent, CorruptAdapter if broken."""
        version = self._version_of(ref)
        if not self._dir(version).is_dir():
            raise UnknownVersion(f"no version {self.name}@{version} in {self.root}")
        return self._read_manifest(version)

    def path(self, ref: str) -> Path:
        """Directory of a version (what serving hands to the engine)."""
        d = self._dir(self._version_of(ref))
        if not d.is_dir():
            raise UnknownVersion(f"no version {d.name} in {self.root}")
        return d

    def latest(self) -> Manifest | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def verify(self, ref: str) -> Manifest:
        """Recompute every digest; CorruptAdapter naming the first file that is off."""
        m = self.get(ref)
        d = self._dir(m.version)
        on_disk = {p.relative_to(d).as_posix() for p in d.rglob("*") if not p.is_dir()}
        on_disk.discard(MANIFEST)
        missing = sorted(set(m.files) - on_disk)
        if missing:
            raise CorruptAdapter(f"{m.ref}: missing file(s): {', '.join(missing)}")
        extra = sorted(on_disk - set(m.files))
        if extra:
            raise CorruptAdapter(f"{m.ref}: file(s) not in the manifest: {', '.join(extra)}")
        for name in sorted(m.files):
            got = sha256_file(d / name)
            if got != m.files[name]:
                raise CorruptAdapter(
                    f"{m.ref}: {name} checksum mismatch "
                    f"(manifest {m.files[name][:12]}..., on disk {got[:12]}...)"
                )
        return m

    def check_compatible(
        self, ref: str, base_config: dict[str, Any], *, max_rank: int = DEFAULT_MAX_RANK
    ) -> None:
        """Raise IncompatibleAdapter unless version `ref` fits the base model.

        `base_config` is the base model's HF config.json dict. See check_adapter_dir().
        """
        check_adapter_dir(self.path(ref), base_config, max_rank=max_rank)

    # ---- state --------------------------------------------------------------------------

    def state(self) -> RegistryState:
        """Current state.json; an empty state if none was written yet."""
        path = self.root / STATE
        try:
            return RegistryState.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return RegistryState()
        except OSError as e:
            raise RegistryError(f"{path} unreadable: {e}") from e
        except ValidationError as e:
            # Never reset silently: that would forget which version is stable.
            raise RegistryError(f"{path} invalid: {_errors(e)}") from e

    def _existing(self, ref: str | None) -> str | None:
        return None if ref is None else self.get(ref).ref

    def set_state(
        self,
        *,
        stable: str | Literal["keep"] | None = "keep",
        canary: str | Literal["keep"] | None = "keep",
        action: str,
        reason: str = "",
    ) -> RegistryState:
        """Change stable and/or canary ("keep" leaves one as is) and append to the history.

        Refs must exist (plain "N" is accepted and stored as "name@N"). Promoting the canary
        to stable while leaving `canary` as "keep" clears the canary.
        """
        if not action:
            raise ValueError("action must be a non-empty string")
        with self._locked():
            old = self.state()
            new_stable = old.stable if stable == "keep" else self._existing(stable)
            new_canary = old.canary if canary == "keep" else self._existing(canary)
            if new_canary is not None and new_canary == new_stable:
                if canary != "keep":
                    raise RegistryError(f"{new_canary} cannot be both stable and canary")
                new_canary = None  # the canary was promoted: it is no longer on trial
            change = StateChange(
                ts_ms=int(time.time() * 1000),
                action=action,
                ref=self._subject(old, stable, canary, new_stable, new_canary),
                reason=reason,
                stable=new_stable,
                canary=new_canary,
            )
            new = RegistryState(
                stable=new_stable, canary=new_canary, history=[*old.history, change]
            )
            self._write_state(new)
        log.info("registry %s: %s stable=%s canary=%s", self.name, action, new_stable, new_canary)
        return new

    @staticmethod
    def _subject(
        old: RegistryState,
        stable: str | None,
        canary: str | None,
        new_stable: str | None,
        new_canary: str | None,
    ) -> str | None:
        """The version a change is about: a new canary, else a new stable, else what left."""
        if canary not in ("keep", None):
            return new_canary
        if stable not in ("keep", None):
            return new_stable
        if canary is None:
            return old.canary
        if stable is None:
            return old.stable
        return None

    def _write_state(self, state: RegistryState) -> None:
        tmp = self.root / f"{STATE_TEMP_PREFIX}{uuid.uuid4().hex}.tmp"
        try:
            _write_durably(tmp, state.model_dump_json(indent=2).encode())
            os.replace(tmp, self.root / STATE)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)

    # ---- housekeeping -------------------------------------------------------------------

    def gc_temp(self, older_than_s: float = 3600) -> int:
        """Remove temp dirs/files of crashed publishes older than `older_than_s`; count them.

        The age threshold is what protects a publish still copying: keep it well above
        the time one publish takes.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        for p in self.root.iterdir():
            is_state_tmp = p.name.startswith(STATE_TEMP_PREFIX) and p.name.endswith(".tmp")
            if not (p.name.startswith(TEMP_PREFIX) or is_state_tmp):
                continue
            try:
                if p.lstat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue  # another gc got there first
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed += 1
        return removed
