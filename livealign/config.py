"""One typed settings object for the whole local stack.

Where a setting comes from, lowest precedence first:

1. its default, written once: a part's own knob takes the default of the part's config
   (``grace_s`` is ``ProcessorConfig``'s, ``trainer_interval_s`` is ``TrainerConfig``'s);
2. the TOML file (``--config livealign.toml``);
3. files in the secrets folder named by ``LIVEALIGN_SECRETS_DIR``, one setting a file, named
   as its variable in lower case (``livealign_store_url``, ``livealign_feedback_secret``):
   Kubernetes' mounted Secrets, so that no secret need be an environment variable;
4. the environment, prefix ``LIVEALIGN_`` (``LIVEALIGN_PORT=9000``); a table as JSON
   (``LIVEALIGN_FUSION_OVERRIDES='{"dwell_half_point_ms": 9000}'``);
5. explicit arguments: command-line flags, or keyword arguments in code.

A table (``fusion_overrides``, ``record_overrides``, ``trainer_overrides``, ...) is merged key by
key across those sources. Every setting has exactly one place: a flat field, or a key of
one table, never both. A table refuses a key that a flat field owns (the fusion mode is
``fusion_mode``; the trainer's schedule is ``trainer_interval_s`` and
``trainer_min_new_records``; paths derive from ``home``, ``model`` and ``store_url``).

Parts never read this directly: ``serving_config()``, ``processor_config()`` and
``trainer_config()`` turn it into the config object each part takes. A child process (the
stream processor) gets its settings the way any deployment does: as the environment
(``to_env()``), read back by ``Settings()``.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from livealign.files import make_private, write_private
from serving.canary.policy import CanaryPolicy
from serving.config import ControllerConfig, EngineConfig, ServingConfig, StatusConfig
from streaming.fusion import FusionConfig
from streaming.processor import ProcessorConfig
from streaming.producer import ProducerConfig
from streaming.records import RecordConfig
from trainer.config import TrainerConfig

ENV_PREFIX = "LIVEALIGN_"
# The folder of secret files (a mounted Kubernetes Secret), read as a source of settings.
SECRETS_DIR_ENV = f"{ENV_PREFIX}SECRETS_DIR"
# The TOML file Settings.load() reads (a context variable: settings sources are classmethods).
_TOML_FILE: ContextVar[Path | None] = ContextVar("livealign_toml_file", default=None)

# Keys of the part tables that a flat setting owns: table -> {key: the flat setting}.
_OWNED = {
    "fusion_overrides": {"mode": "fusion_mode"},
    "record_overrides": {},
    "canary_overrides": {},
    "status_overrides": {},
    "trainer_overrides": {
        "interval_s": "trainer_interval_s",
        "min_new_records": "trainer_min_new_records",
        "base_model": "model",
        "registry_dir": "home",
        "work_dir": "home",
        "store_url": "store_url",
    },
}


def _default(model: Any, name: str) -> Any:
    """The default of a part's config field: one definition, read here."""
    return model.model_fields[name].default


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    home: Path = Field(Path("var"), description="State: model cache, spool, secrets, logs.")
    kafka: str | None = Field(None, description="HOST:PORT of a Kafka cluster; none: embedded.")
    broker_port: int | None = Field(None, description="Port of the embedded broker; none: free.")
    broker_storage: str = Field(
        "memory://tansu/",
        description="The embedded broker's storage: memory (forgotten when it stops) or an "
        "S3 bucket, s3://BUCKET/, reached with the AWS_* variables of the environment "
        "(AWS_ENDPOINT for a non-AWS store), which outlives a broker restart.",
    )
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
    fusion_mode: Literal["explicit", "implicit", "fused"] = _default(FusionConfig, "mode")
    fusion_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other FusionConfig field: in TOML a table [fusion_overrides] with "
        "dwell_half_point_ms = 9000, say (the environment: LIVEALIGN_FUSION_OVERRIDES as JSON).",
    )
    record_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Any RecordConfig field (which records fused feedback makes): a table "
        "[record_overrides] with pair_margin = 0.3, say.",
    )
    grace_s: float = Field(
        _default(ProcessorConfig, "grace_s"),
        description="How long feedback waits for its interaction.",
    )
    settle_s: float = Field(
        _default(ProcessorConfig, "settle_s"),
        description="A response's feedback window: when it closes, the response's records "
        "(label, pairs, outcome) are made and judged by the canary controller.",
    )
    processor: bool = Field(True, description="Start the stream processor with the stack.")
    processor_group: str = Field(
        _default(ProcessorConfig, "group_id"),
        description="The processors' Kafka consumer group: one per deployment sharing a Kafka.",
    )
    trainer: bool = Field(True, description="Start the trainer actor with the stack.")
    trainer_interval_s: float = Field(
        _default(TrainerConfig, "interval_s"), description="A round at least this often."
    )
    trainer_min_new_records: int = Field(
        _default(TrainerConfig, "min_new_records"), description="Or once this many are new."
    )
    trainer_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other TrainerConfig field, nested ones merged: in TOML a table "
        "[trainer_overrides.train] with max_length = 192, say.",
    )
    canary: bool = Field(True, description="Start the canary controller with the stack.")
    canary_unit: Literal["conversation", "user"] = Field(
        "conversation", description="What a canary arm is assigned to (sticky)."
    )
    canary_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Any CanaryPolicy field (steps, alpha, margin, guardrails...): a table "
        "[canary_overrides] with steps = [0.1, 0.5, 1.0], say.",
    )
    status_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Any StatusConfig field (the status page at /status): a table "
        "[status_overrides] with enabled = false, say.",
    )
    monitoring: bool = Field(
        False, description="Start Prometheus with the stack, scraping every part's metrics."
    )
    prometheus_port: int | None = Field(None, description="Prometheus' port; none: free.")
    scrape_interval_s: float = Field(
        15.0, gt=0, description="How often Prometheus scrapes each part (and evaluates rules)."
    )
    engine_metrics: bool = Field(
        True,
        description="vLLM's own metrics (queue, KV cache, preemptions, prefix cache) on each "
        "replica's metrics endpoint.",
    )
    admin_key: SecretStr | None = Field(None, description="Admin API key; none: made once.")
    api_keys: bool = Field(
        False,
        description="Require an API key on chat, models and feedback (the keys are in the "
        "home's api_keys.json, managed with `livealign keys`); off: open to every caller.",
    )
    api_keys_path: Path | None = Field(
        None,
        description="The API keys file; none: api_keys.json in home. In a cluster, a file of "
        "a mounted Secret's folder (a folder mount: a Secret's update reaches the file).",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address every part's own metrics endpoint listens on (a cluster: "
        "0.0.0.0, for a Prometheus in another pod).",
    )
    serving_metrics_port: int = Field(
        0, ge=0, description="Each serving replica's metrics port; 0: a free one (local)."
    )
    processor_metrics_port: int = Field(
        0, ge=0, description="The processor's metrics port (`livealign processor`); 0: none."
    )
    trainer_metrics_port: int = Field(0, ge=0, description="The trainer's; 0: a free one.")
    canary_metrics_port: int = Field(0, ge=0, description="The canary controller's; 0: a free one.")
    feedback_origins: list[str] = Field(
        default_factory=list,
        description="Origins (scheme://host:port) whose pages may send feedback from the "
        "browser widget (CORS on POST /v1/feedback); none: the app's own pages only.",
    )
    feedback_secret: SecretStr | None = Field(None, description="None: made once, kept in home.")
    user_hash_salt: SecretStr | None = None

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> Settings:
        """Settings from the TOML file at ``path`` (if any), the environment, and the
        explicit ``overrides`` (None means "not given"), in the precedence above."""
        with _toml_file(path):
            return cls(**{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: arguments, the environment, the secrets folder, the TOML file.
        path = _TOML_FILE.get()
        toml = () if path is None else (TomlConfigSettingsSource(settings_cls, toml_file=path),)
        folder = os.environ.get(SECRETS_DIR_ENV)
        files = () if not folder else (SecretsSettingsSource(settings_cls, secrets_dir=folder),)
        return (init_settings, env_settings, *files, *toml)

    @model_validator(mode="after")
    def _one_place_per_setting(self) -> Settings:
        for table, owned in _OWNED.items():
            for key in getattr(self, table):
                if key in owned:
                    raise ValueError(f"{table}: {key!r} is the setting {owned[key]!r}; set that")
        FusionConfig.model_validate({**self.fusion_overrides, "mode": self.fusion_mode})
        RecordConfig.model_validate(self.record_overrides)
        StatusConfig.model_validate(self.status_overrides)
        self.canary_policy()
        return self

    def canary_policy(self) -> CanaryPolicy:
        return CanaryPolicy.model_validate(self.canary_overrides)

    def controller_config(self, bootstrap: str) -> ControllerConfig:
        return ControllerConfig(
            registry_dir=self.registry_dir,
            store_url=self.processor_config(bootstrap).store_url,
            bootstrap_servers=bootstrap,
            policy=self.canary_policy(),
        )

    def to_env(self, **replace: Any) -> dict[str, str]:
        """These settings as LIVEALIGN_* environment variables, for a child process that
        builds its own ``Settings()`` (secrets left out: the child reads them from home,
        or inherits them from this process's environment)."""
        env: dict[str, str] = {}
        for name, value in {**self.model_dump(mode="json"), **replace}.items():
            if value is None or isinstance(getattr(self, name), SecretStr):
                continue
            text = value if isinstance(value, str) else json.dumps(value)
            env[f"{ENV_PREFIX}{name.upper()}"] = text
        return env

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
        if not path.is_file():
            made = {
                "feedback_secret": secrets.token_hex(32),
                "user_hash_salt": secrets.token_hex(16),
                "admin_key": secrets.token_urlsafe(24),
            }
            # Whole or not at all, 0600; a process that raced this one and wrote first
            # wins, so every process of this home signs with the same secret.
            write_private(path, json.dumps(made).encode(), replace=False)
        make_private(path)
        stored: dict[str, str] = json.loads(path.read_text())
        return stored

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
                engine_metrics=self.engine_metrics,
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
            api_keys_file=self.api_keys_file if self.api_keys else None,
            feedback_origins=self.feedback_origins,
            registry_dir=self.registry_dir,
            metrics_host=self.metrics_host,
            metrics_port=self.serving_metrics_port,
            canary_unit=self.canary_unit,
            canary_policy=self.canary_policy(),
            metrics_targets_dir=self.targets_dir,
            store_url=self.processor_config(bootstrap).store_url,
            status=StatusConfig.model_validate(self.status_overrides),
        )

    def resolved_dtype(self) -> Literal["bfloat16", "float32"]:
        if self.dtype != "auto":
            return self.dtype
        from trainer.train import native_bf16  # one definition, shared with training

        return "bfloat16" if native_bf16() else "float32"

    @property
    def registry_dir(self) -> Path:
        return (self.home / "registry").resolve()

    @property
    def api_keys_file(self) -> Path:
        """The API keys (their digests and limits): ``livealign keys`` writes it."""
        return (self.api_keys_path or self.home / "api_keys.json").resolve()

    @property
    def targets_dir(self) -> Path:
        """Where every part announces its metrics endpoint (Prometheus file discovery)."""
        return (self.home / "scrape-targets").resolve()

    @property
    def prometheus_dir(self) -> Path:
        return (self.home / "prometheus").resolve()

    def trainer_config(self, model_path: Path, bootstrap: str) -> TrainerConfig:
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
            group_id=self.processor_group,
            store_url=url,
            grace_s=self.grace_s,
            settle_s=self.settle_s,
            fusion=FusionConfig.model_validate({**self.fusion_overrides, "mode": self.fusion_mode}),
            records=RecordConfig.model_validate(self.record_overrides),
        )


@contextmanager
def _toml_file(path: Path | None) -> Iterator[None]:
    token = _TOML_FILE.set(path)
    try:
        yield
    finally:
        _TOML_FILE.reset(token)


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
