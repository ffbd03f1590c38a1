"""Registry: the one class the trainer and serving use, composed of the parts.

VersionStore (versions.py) stores and reads versions, StateMixin (state.py) reads and
changes state.json, check_adapter_dir (compat.py) judges an adapter against a base model.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from trainer.registry.compat import DEFAULT_MAX_RANK, check_adapter_dir
from trainer.registry.state import STATE_TEMP_PREFIX, StateMixin
from trainer.registry.versions import TEMP_PREFIX, VersionStore


class Registry(VersionStore, StateMixin):
    """Versioned adapters under `root`; safe for several processes and threads at once."""

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r}, name={self.name!r})"

    # ---- compatibility ------------------------------------------------------------------

    def check_compatible(
        self, ref: str, base_config: dict[str, Any], *, max_rank: int = DEFAULT_MAX_RANK
    ) -> None:
        """Raise IncompatibleAdapter unless version `ref` fits the base model.

        `base_config` is the base model's HF config.json dict. See check_adapter_dir().
        """
        check_adapter_dir(self.path(ref), base_config, max_rank=max_rank)

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
