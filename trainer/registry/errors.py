"""The registry's exceptions, and the one-line form of a pydantic error they carry."""

from __future__ import annotations

from pydantic import ValidationError


class RegistryError(Exception):
    """Base of every registry error."""


class CorruptAdapter(RegistryError):
    """A version's files do not match its manifest, or the manifest cannot be read."""


class IncompatibleAdapter(RegistryError):
    """The adapter does not fit the base model (type, rank, modules or sizes)."""


class UnknownVersion(RegistryError):
    """No such version in this registry."""


def describe_invalid(e: ValidationError) -> str:
    """Every problem pydantic found, as "field.path: message; ..." for an error message."""
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or '-'}: {err['msg']}" for err in e.errors())
