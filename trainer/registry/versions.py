"""Version storage: one immutable `<name>@<N>` directory per version, with its manifest.

A version is published by copying the adapter into a `.tmp-<uuid>` directory, writing
manifest.json (provenance plus sha256 of every file), fsyncing, and renaming it into
place under the root lock. The read side lists versions, loads a manifest and verifies
the files against it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from livealign.files import fsync_dir
from trainer.registry.compat import ADAPTER_CONFIG, WEIGHT_FILES, read_adapter_config
from trainer.registry.errors import CorruptAdapter, RegistryError, UnknownVersion, describe_invalid
from trainer.registry.files import copy_and_hash, locked, sha256_file, write_durably

log = logging.getLogger(__package__)  # "trainer.registry": one logger for the whole package

MANIFEST = "manifest.json"
TEMP_PREFIX = ".tmp-"

_HEX64 = r"^[0-9a-f]{64}$"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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


def combined_digest(files: dict[str, str]) -> str:
    """The version checksum: sha256 over sorted "filename:digest\\n" lines."""
    lines = "".join(f"{name}:{files[name]}\n" for name in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


class VersionStore:
    """The `<name>@<N>` version directories under `root`: publish, read and verify them."""

    def __init__(self, root: Path, name: str = "livealign") -> None:
        if not _NAME.match(name):
            raise ValueError(f"registry name {name!r} must match {_NAME.pattern}")
        self.root = Path(root)
        self.name = name
        self.root.mkdir(parents=True, exist_ok=True)
        self._dir_re = re.compile(rf"^{re.escape(name)}@([1-9][0-9]*)$")

    # ---- naming -------------------------------------------------------------------------

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
            raise CorruptAdapter(f"{ref}: {MANIFEST} invalid: {describe_invalid(e)}") from e
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
        read_adapter_config(src)  # fail before copying anything if it is not even JSON
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
            files = {n: copy_and_hash(Path(src) / n, tmp / n) for n in names}
            with locked(self.root):
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
        write_durably(tmp / MANIFEST, manifest.model_dump_json(indent=2).encode())
        for p in tmp.iterdir():
            p.chmod(0o444)  # versions are immutable; this catches accidental writes
        fsync_dir(tmp)
        os.rename(tmp, self._dir(manifest.version))
        fsync_dir(self.root)  # make the rename itself durable

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
