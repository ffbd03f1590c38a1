"""Versioned LoRA adapter registry: the on-disk format the trainer writes and serving reads.

This format is a contract. The trainer publishes versions here; serving depends on it:
serving/adapters.py reads state.json and loads the version folders, on every running
replica. A change to the layout, to manifest.json or to state.json must stay readable by
the serving replicas that are already running.

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

One module per job:

- versions.py: the version directories: Manifest, publish, get, path, verify.
- state.py: state.json: stable and canary refs, their history, set_state() under the lock.
- compat.py: does an adapter fit the base model (rank, target modules, tensor shapes).
- registry.py: Registry, the class callers use, composed of the parts above.
- files.py: checksums, fsynced writes and copies, the lock.
- errors.py: the exceptions.
"""

from trainer.registry.compat import DEFAULT_MAX_RANK, check_adapter_dir
from trainer.registry.errors import (
    CorruptAdapter,
    IncompatibleAdapter,
    RegistryError,
    UnknownVersion,
)
from trainer.registry.files import sha256_file
from trainer.registry.registry import Registry
from trainer.registry.state import RegistryState, Rollout, StateChange
from trainer.registry.versions import DataWindow, Manifest, combined_digest

__all__ = [
    "DEFAULT_MAX_RANK",
    "CorruptAdapter",
    "DataWindow",
    "IncompatibleAdapter",
    "Manifest",
    "Registry",
    "RegistryError",
    "RegistryState",
    "Rollout",
    "StateChange",
    "UnknownVersion",
    "check_adapter_dir",
    "combined_digest",
    "sha256_file",
]
