"""One typed settings object for the whole local stack: defaults < TOML file < environment.

Environment variables use the prefix ``LIVEALIGN_`` (``LIVEALIGN_PORT=9000``,
``LIVEALIGN_KAFKA=broker:9092``). Parts never read this directly; ``serving_config()``
and friends turn it into the config objects each part takes.
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.config import EngineConfig, ServingConfig
from streaming.fusion import FusionConfig
from streaming.processor import ProcessorConfig
from streaming.producer import ProducerConfig

if TYPE_CHECKING:
    from trainer.round import TrainerConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LIVEALIGN_", extra="forbid")

    home: Path = Field(Path("var"), description="State: model cache, spool, secrets, logs.")
    kafka: str | None = Field(None, description="HOST:PORT of a Kafka cluster; none: embedded.")
    broker_port: int | None = Field(None, description="Port of the embedded broker; none: free.")
    partitions: int = Field(4, description="Partitions per topic when LiveAlign creates them.")
    model: str = Field("smollm2", description='"smollm2", "tiny", or an HF-format folder.')
    served_model_name: str = "livealign"
    host: str = "127.0.0.1"
    port: int = 8000
    ray_num_cpus: int = 2
    max_model_len: int = 2048
    kv_cache_gib: int = 1
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto",
        description="Serving dtype; auto: bf16 where the hardware computes it natively, else "
        "fp32 (on an AVX2-only CPU bf16 is emulated and ~2.7x slower).",
    )
    enable_lora: bool = True
    default_max_tokens: int = 256
    store_url: str | None = Field(None, description="Preference store; none: SQLite in home.")
    fusion_mode: Literal["explicit", "implicit", "fused"] = "fused"
    fusion_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other FusionConfig field: in TOML a table [fusion_overrides] with "
        "min_confidence = 0.2, say (the environment: LIVEALIGN_FUSION_OVERRIDES as JSON).",
    )
    grace_s: float = Field(300.0, description="How long feedback waits for its interaction.")
    processor: bool = Field(True, description="Start the stream processor with the stack.")
    trainer: bool = Field(True, description="Start the trainer actor with the stack.")
    trainer_interval_s: float = Field(600.0, description="A round at least this often.")
    trainer_min_new_records: int = Field(64, description="Or once this many records are new.")
    trainer_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other TrainerConfig field, nested ones merged: in TOML a table "
        "[trainer_overrides.train] with max_length = 192, say.",
    )
    admin_key: SecretStr | None = Field(None, description="Admin API key; none: made once.")
    feedback_secret: SecretStr | None = Field(None, description="None: made once, kept in home.")
    user_hash_salt: SecretStr | None = None

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> Settings:
        data: dict[str, Any] = {}
        if path is not None:
            data = tomllib.loads(path.read_text())
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    cache: Path = Field(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "livealign",
        description="Converted models, shared by every checkout on this machine.",
    )

    @property
    def cache_dir(self) -> Path:
        return self.cache / "models"

    def _secrets(self) -> dict[str, str]:
        """Secrets made once per home, so tokens stay valid across restarts."""
        path = self.home / "secrets.json"
        if path.is_file():
            stored: dict[str, str] = json.loads(path.read_text())
            return stored
        made = {
            "feedback_secret": secrets.token_hex(32),
            "user_hash_salt": secrets.token_hex(16),
            "admin_key": secrets.token_urlsafe(24),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(made))
        return made

    def serving_config(self, model_path: Path, bootstrap: str) -> ServingConfig:
        stored = self._secrets()
        return ServingConfig(
            engine=EngineConfig(
                model_path=str(model_path),
                dtype=self.resolved_dtype(),
                served_model_name=self.served_model_name,
                max_model_len=self.max_model_len,
                kv_cache_gib=self.kv_cache_gib,
                enable_lora=self.enable_lora,
            ),
            producer=ProducerConfig(
                bootstrap_servers=bootstrap, spool_dir=(self.home / "spool").resolve()
            ),
            host=self.host,
            port=self.port,
            default_max_tokens=self.default_max_tokens,
            feedback_secret=self.feedback_secret or SecretStr(stored["feedback_secret"]),
            user_hash_salt=self.user_hash_salt or SecretStr(stored["user_hash_salt"]),
            admin_key=self.admin_key or SecretStr(stored["admin_key"]),
            registry_dir=self.registry_dir,
        )

    def resolved_dtype(self) -> Literal["bfloat16", "float32"]:
        if self.dtype != "auto":
            return self.dtype
        from trainer.train import native_bf16  # one definition, shared with training

        return "bfloat16" if native_bf16() else "float32"

    @property
    def registry_dir(self) -> Path:
        return (self.home / "registry").resolve()

    def trainer_config(self, model_path: Path, bootstrap: str) -> TrainerConfig:
        from trainer.round import TrainerConfig  # torch/TRL: only when a trainer runs

        config = TrainerConfig(
            base_model=model_path,
            registry_dir=self.registry_dir,
            store_url=self.processor_config(bootstrap).store_url,
            work_dir=(self.home / "work").resolve(),
            interval_s=self.trainer_interval_s,
            min_new_records=self.trainer_min_new_records,
        )
        merged = _deep_merge(config.model_dump(), self.trainer_overrides)
        return TrainerConfig.model_validate(merged)  # a misspelled field is an error

    def processor_config(self, bootstrap: str) -> ProcessorConfig:
        url = self.store_url or f"sqlite:///{(self.home / 'preferences.sqlite').resolve()}"
        return ProcessorConfig(
            bootstrap_servers=bootstrap,
            store_url=url,
            grace_s=self.grace_s,
            fusion=FusionConfig.model_validate({**self.fusion_overrides, "mode": self.fusion_mode}),
        )


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
