"""Versioned LoRA adapter registry (see versions.py for now; being split into modules)."""

from trainer.registry.versions import (
    DEFAULT_MAX_RANK,
    CorruptAdapter,
    DataWindow,
    IncompatibleAdapter,
    Manifest,
    Registry,
    RegistryError,
    RegistryState,
    StateChange,
    UnknownVersion,
    check_adapter_dir,
    combined_digest,
    sha256_file,
)

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
