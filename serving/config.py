"""Serving configuration: one typed object, built by ``livealign.config`` and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from serving.canary.policy import CanaryPolicy
from streaming.producer import ProducerConfig


class EngineConfig(BaseModel):
    """How vLLM runs the model (mirrors the vLLM engine arguments we use)."""

    model_path: str = Field(description="HF-format model folder served by vLLM.")
    served_model_name: str = Field("livealign", description="Name clients pass as `model`.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    max_model_len: int = 2048
    kv_cache_gib: int = Field(1, description="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE).")
    enable_lora: bool = True
    max_loras: int = Field(
        3, description="Adapters loaded at once: stable and canary, and a stable swapping in."
    )
    max_lora_rank: Literal[8, 16, 32, 64] = 16
    max_num_seqs: int = 64
    enforce_eager: bool = False
    engine_metrics: bool = Field(
        True,
        description="vLLM's Prometheus metrics (scheduler queue, KV cache use, preemptions, "
        "prefix-cache hits, its latency histograms) in this process's registry.",
    )


# The deployment's name, which a Ray Serve deployment handle asks for (the trainer's sampler).
DEPLOYMENT_NAME = "ChatServer"


class SamplingLimits(BaseModel):
    """Bounds of the trainer's sampling path (``serving.sampling``): it shares the engine
    with user traffic, so one call may take only so much of it."""

    model_config = ConfigDict(extra="forbid")

    max_prompts: int = Field(64, ge=1, description="Most prompts in one sampling call.")
    max_k: int = Field(8, ge=1, description="Most samples per prompt (vLLM's n).")
    max_tokens: int = Field(256, ge=1, description="Longest sample, in tokens.")
    timeout_s: float = Field(
        300.0, gt=0, description="A call still generating after this is aborted (and fails)."
    )


class StatusConfig(BaseModel):
    """The status page (``GET /status``) and its JSON (``GET /v1/status``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        True,
        description="Serve them. They show no user content (no prompt, answer, user or "
        "conversation), only the numbers /metrics already exposes and the versions' gate "
        "metrics, so they are public, like /metrics; off: both answer 404.",
    )
    window_s: float = Field(
        24 * 3600.0, gt=0, description="The chart's span, and the versions' live scores' window."
    )
    buckets: int = Field(48, ge=1, le=1000, description="Points of each version's score line.")
    feedback_window_s: float = Field(
        3600.0,
        gt=0,
        description="Feedback rates are over the answers created this long ago or less "
        "whose feedback window has closed.",
    )
    max_versions: int = Field(12, ge=1, description="The newest versions shown.")
    max_rounds: int = Field(10, ge=0, description="The latest training rounds shown.")
    max_events: int = Field(40, ge=0, description="The latest registry changes shown.")
    cache_s: float = Field(
        5.0,
        ge=0,
        description="One assembled status is answered for this long, however many pages "
        "poll: the store reads it costs do not grow with the viewers.",
    )
    refresh_s: float = Field(10.0, gt=0, description="How often the page fetches it again.")
    timeout_s: float = Field(
        10.0, gt=0, description="Longest wait for one assembly (a slow store): then a 503."
    )


class ServingConfig(BaseModel):
    engine: EngineConfig
    producer: ProducerConfig = Field(default_factory=ProducerConfig)
    host: str = "127.0.0.1"
    port: int = 8000
    default_max_tokens: int = Field(256, description="max_tokens when a request sets none.")
    feedback_secret: SecretStr = Field(description="HMAC key for feedback tokens.")
    user_hash_salt: SecretStr = Field(description="Salt for hashing the OpenAI `user` field.")
    feedback_token_ttl_s: int = Field(7 * 24 * 3600, description="How long feedback is taken.")
    # The request bounds (body size, feedback batch, every field) are the API's own, in
    # serving.limits: the OpenAPI document states them.
    delivery_timeout_s: float = Field(
        15.0, description="How long a feedback request waits for broker ack or disk spool."
    )
    registry_dir: Path | None = Field(None, description="Adapter registry; none: base only.")
    registry_poll_s: float = Field(2.0, description="How often the registry's state is read.")
    canary_unit: Literal["conversation", "user"] = Field(
        "conversation",
        description="What a canary arm is assigned to: each conversation, or each (hashed) "
        "user, so one user always sees one arm (requests without a user: their conversation).",
    )
    canary_policy: CanaryPolicy = Field(
        default_factory=CanaryPolicy,
        description="The rollout's steps: an operator's set-weight must name one of them.",
    )
    drain_timeout_s: float = Field(300.0, description="Longest wait for in-flight requests.")
    admin_key: SecretStr | None = Field(None, description="Bearer key of /admin; none: off.")
    api_keys_file: Path | None = Field(
        None,
        description="API keys (serving.auth): chat, models and feedback need one of this "
        "file's keys; none: open to every caller, as the principal `public`.",
    )
    feedback_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to POST /v1/feedback from a browser (CORS), exactly as "
        "a browser sends them (`https://chat.example.com`); none: same origin only.",
    )
    store_url: str | None = Field(
        None, description="The preference store, read by the status page; none: not shown."
    )
    status: StatusConfig = Field(default_factory=StatusConfig, description="The status page.")
    sampling: SamplingLimits = Field(
        default_factory=SamplingLimits, description="Bounds of the trainer's sampling path."
    )
    metrics_targets_dir: Path | None = Field(
        None,
        description="Each replica serves its metrics on a port of its own and announces it "
        "here for Prometheus (file-based discovery); none: only GET /metrics.",
    )
    metrics_host: str = Field("127.0.0.1", description="Where that port listens.")
    metrics_port: int = Field(
        0,
        ge=0,
        description="That port; 0: a free one. A cluster gives one replica a pod "
        "and a fixed port, which a PodMonitor scrapes.",
    )
    replica_num_cpus: float = 0.5
    max_ongoing_requests: int = 128


class ControllerConfig(BaseModel):
    """The canary controller's: where it reads and writes, and its policy."""

    registry_dir: Path
    store_url: str = Field(description="SQLAlchemy URL of the preference store.")
    bootstrap_servers: str | None = Field(None, description="Kafka for the decisions topic.")
    policy: CanaryPolicy = Field(default_factory=CanaryPolicy)
    request_timeout_ms: int = 10_000
