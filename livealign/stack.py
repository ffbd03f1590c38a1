"""The local stack: embedded broker (unless --kafka), local Ray, the Serve app, and
Prometheus (with --monitoring).

``LocalStack`` starts what it owns and stops exactly that again, in reverse order.
The test suite uses the same class, so what the tests run is what ``livealign up`` runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from livealign.config import Settings
from livealign.files import write_private
from livealign.models import prepare_smollm2, prepare_tiny
from livealign.processes import stop_process
from monitoring import logs, targets
from monitoring.prometheus import PrometheusServer, shipped_rules
from streaming.broker import EmbeddedBroker, free_port
from streaming.topics import ensure_topics

if TYPE_CHECKING:
    from trainer.config import TrainerConfig

log = logging.getLogger(__name__)

APP_NAME = "livealign"  # the Serve application: its deployment handles are found by it


def resolve_model(settings: Settings) -> Path:
    if settings.model == "smollm2":
        return prepare_smollm2(settings.cache_dir)
    if settings.model == "tiny":
        return prepare_tiny(settings.cache_dir)
    path = Path(settings.model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--model {path}: not an HF-format model folder (no config.json)")
    return path


def ray_token_auth(home: Path) -> str:
    """Ray's token authentication, unless ``RAY_AUTH_MODE`` says otherwise: without it,
    any process that reaches this machine's Ray ports can run code in the cluster (and
    so read the secrets, write the registry, train on anything). The token is made once
    and kept in the home, mode 0600; ``RAY_AUTH_TOKEN_PATH`` points Ray's own tools
    (``ray status``) and every worker at it. Returns the mode Ray runs in."""
    mode = os.environ.setdefault("RAY_AUTH_MODE", "token").lower()
    if mode != "token":
        return mode
    token = (home / "ray_auth_token").resolve()
    path = Path(os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(token)))
    if not path.exists():
        write_private(path, secrets.token_hex(32).encode())  # 256 bits, as Ray's own
    # Ray reads the mode and the token once per process, when first imported (a test
    # session or a caller may have imported it already): read them again, or this
    # driver would talk to its token-checking cluster without one.
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    return mode


class LocalStack:
    def __init__(self, settings: Settings, quiet: bool = False) -> None:
        self.settings = settings
        self.quiet = quiet  # the workers' output on the terminal: only what monitoring.logs keeps
        self.broker: EmbeddedBroker | None = None
        self.bootstrap = settings.kafka or ""
        self._ray_started = False
        self.processor: subprocess.Popen[bytes] | None = None
        self.processor_metrics_port = 0
        self.trainer: Any = None
        self.trainer_metrics_port = 0
        self.canary: Any = None
        self.canary_metrics_port = 0
        self.prometheus: PrometheusServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def start(self, timeout: float = 600.0) -> LocalStack:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        s = self.settings
        s.home.mkdir(parents=True, exist_ok=True)
        targets.clear(s.targets_dir)  # an earlier run's, stopped too hard to clean up
        if s.monitoring:
            self.start_prometheus()
        model_path = resolve_model(s)
        if s.kafka is None:
            self.broker = EmbeddedBroker(
                s.broker_port, log_path=s.home / "broker.log", storage=s.broker_storage
            ).start()
            self.bootstrap = self.broker.bootstrap
            log.info("broker started at %s (log: %s)", self.bootstrap, self.broker.log_path)
        ensure_topics(self.bootstrap, s.partitions)
        if s.processor:
            self.start_processor()

        # Imported here: Ray and vLLM are heavy, and `livealign chat` needs neither.
        import ray
        from ray import serve

        from serving.app import build_app

        logs.adopt("ray.serve")  # its lines to our handlers (the log file; the terminal's filter)
        mode = ray_token_auth(s.home)
        ray.init(
            num_cpus=s.ray_num_cpus,
            include_dashboard=False,
            configure_logging=True,
            logging_level=logging.WARNING,
        )
        self._ray_started = True
        if self.quiet and not logs.quiet_worker_output():
            log.warning("this Ray version's worker output cannot be filtered: all of it shows")
        log.info("Ray started (%d CPUs, authentication: %s)", s.ray_num_cpus, mode)
        serve.start(http_options={"host": s.host, "port": s.port})
        config = s.serving_config(model_path, self.bootstrap)
        serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
        self._wait_ready(timeout)
        log.info("serving %s at %s/v1 (Kafka %s)", model_path.name, self.url, self.bootstrap)
        if s.canary:
            self.start_canary()
        if s.trainer:
            self.start_trainer(model_path)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{self.url}/healthz", timeout=5.0)
                if r.status_code == 200:
                    return
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(1.0)
        raise TimeoutError(f"{self.url}/healthz not ready after {timeout:.0f}s ({last})")

    def start_prometheus(self) -> None:
        """Prometheus over the targets folder every part announces itself in."""
        s = self.settings
        self.prometheus = PrometheusServer(
            s.prometheus_dir, s.targets_dir, s.prometheus_port or free_port(),
            s.scrape_interval_s, shipped_rules(),
        ).start()  # fmt: skip
        log.info("Prometheus started at %s", self.prometheus.url)

    def start_trainer(self, model_path: Path, config: TrainerConfig | None = None) -> None:
        """The trainer Ray actor, looping until stop(): rounds on schedule or on data. Its
        teacher samples through the serving deployment's handle, in this Ray cluster.
        ``config``: instead of the settings' (a test's own schedule, say)."""
        from trainer.actor import TrainerActor
        from trainer.sampler import ServeSampler

        s = self.settings
        self.trainer_metrics_port = s.trainer_metrics_port or free_port()
        config = config or s.trainer_config(model_path, self.bootstrap)
        sampler = ServeSampler(APP_NAME)
        self.trainer = TrainerActor.remote(  # type: ignore[attr-defined]
            config, self.trainer_metrics_port, sampler, s.metrics_host
        )
        self.trainer.loop.remote()
        targets.register(self.settings.targets_dir, "trainer", "0", self.trainer_metrics_port)
        log.info("trainer started")

    def start_canary(self) -> None:
        """The canary controller Ray actor: judges each new version on live feedback."""
        from serving.canary.actor import CanaryActor

        s = self.settings
        self.canary_metrics_port = s.canary_metrics_port or free_port()
        config = s.controller_config(self.bootstrap)
        self.canary = CanaryActor.remote(  # type: ignore[attr-defined]
            config, self.canary_metrics_port, s.metrics_host
        )
        self.canary.loop.remote()
        targets.register(self.settings.targets_dir, "canary", "0", self.canary_metrics_port)
        log.info("canary controller started")

    def start_processor(self) -> None:
        """The stream processor runs in its own process, as it would in a cluster."""
        s = self.settings
        self.processor_metrics_port = s.processor_metrics_port or free_port()
        cmd = [sys.executable, "-m", "livealign.cli", "processor",
               "--metrics-port", str(self.processor_metrics_port)]  # fmt: skip
        # Its settings through one channel, the one any deployment uses: the environment.
        env = {**os.environ, **s.to_env(kafka=self.bootstrap, home=str(s.home.resolve()))}
        out = open(self.processor_log, "ab")  # noqa: SIM115 (the child keeps it)
        self.processor = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )  # its own session, as the broker's: the stack stops it, in order
        out.close()
        targets.register(s.targets_dir, "processor", "0", self.processor_metrics_port)
        log.info("stream processor started (log: %s)", self.processor_log)

    @property
    def processor_log(self) -> Path:
        return self.settings.home / "processor.log"

    def supervise(self) -> None:
        """Restart the processor if it died (it resumes from its committed offsets)."""
        if self.processor is not None and self.processor.poll() is not None:
            log.error(
                "processor exited with %s; restarting (see %s)",
                self.processor.returncode,
                self.processor_log,
            )
            self.start_processor()

    def stop_processor(self, timeout: float = 30.0) -> None:
        proc, self.processor = self.processor, None
        # Stopped on purpose: no longer a target (one that died stays, and shows as down).
        targets.unregister(targets.target_file(self.settings.targets_dir, "processor", "0"))
        stop_process(proc, timeout)

    def stop(self) -> None:
        self.stop_processor()
        if self._ray_started:
            import ray
            from ray import serve

            self.stop_trainer()
            self.stop_canary()
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
                self._ray_started = False
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self.prometheus is not None:  # last: it sees the others go
            self.prometheus.stop()
            self.prometheus = None
        targets.clear(self.settings.targets_dir)

    def stop_trainer(self) -> None:
        trainer, self.trainer = self.trainer, None
        if trainer is None:
            return
        targets.unregister(targets.target_file(self.settings.targets_dir, "trainer", "0"))
        import ray

        with contextlib.suppress(Exception):  # it may be mid-round; ray ends it anyway
            ray.get(trainer.stop.remote(), timeout=5)

    def stop_canary(self) -> None:
        canary, self.canary = self.canary, None
        if canary is None:
            return
        targets.unregister(targets.target_file(self.settings.targets_dir, "canary", "0"))
        import ray

        with contextlib.suppress(Exception):
            ray.get(canary.stop.remote(), timeout=5)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
