"""LiveAlign on a Ray cluster that something else runs (KubeRay's RayService): the Serve
applications its config names, built from the settings each pod has (the environment and
the secrets folder, as the Helm chart sets them; see livealign.config).

``serving``: the chat API, the same app ``livealign up`` runs. ``loop``: the learning
loop, one Serve deployment that owns the trainer and canary controller actors, so that
Ray Serve (and KubeRay behind it) restarts them when they die and replaces them on an
upgrade, where a detached actor would outlive its cluster's config.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from livealign.config import Settings
from livealign.stack import APP_NAME, resolve_model
from monitoring import logs

log = logging.getLogger(__name__)

# Custom Ray resources of the chart's worker groups: one a pod, so that each replica (and
# the trainer) has a pod of its own and its metrics a fixed port there.
SERVING_RESOURCE = "livealign_serving"
TRAINER_RESOURCE = "livealign_trainer"


def serving(args: dict[str, Any]) -> Application:
    """The chat API (Serve's application builder: ``import_path: livealign.cluster:serving``)."""
    from serving.app import build_app

    if args:
        raise ValueError(f"livealign.cluster:serving takes no args, got {sorted(args)}")
    settings = Settings()
    if settings.kafka is None:
        raise ValueError("LIVEALIGN_KAFKA is not set: a cluster has no embedded broker")
    return build_app(settings.serving_config(resolve_model(settings), settings.kafka))


class LoopArgs(BaseModel):
    """The learning loop's own knobs, from the Serve config's ``args``."""

    model_config = ConfigDict(extra="forbid")  # a misspelled knob is an error

    trainer: bool = True
    canary: bool = True
    trainer_cpus: float = Field(1.0, gt=0, description="Ray CPUs of the trainer actor.")
    trainer_gpus: float = Field(0.0, ge=0, description="Ray GPUs of the trainer actor.")


def actor_options(args: LoopArgs) -> dict[str, dict[str, Any]]:
    """Ray options of the trainer and canary actors: both on the trainer's pod."""
    trainer: dict[str, Any] = {"num_cpus": args.trainer_cpus, "resources": {TRAINER_RESOURCE: 0.5}}
    if args.trainer_gpus:
        trainer["num_gpus"] = args.trainer_gpus
    return {"trainer": trainer, "canary": {"num_cpus": 0.1, "resources": {TRAINER_RESOURCE: 0.1}}}


@serve.deployment(name="LearningLoop", num_replicas=1, ray_actor_options={"num_cpus": 0.1})
class LearningLoop:
    def __init__(self, args: LoopArgs) -> None:
        from serving.canary.actor import CanaryActor
        from trainer.actor import TrainerActor
        from trainer.sampler import ServeSampler

        logs.setup()
        settings = Settings()
        if settings.kafka is None:
            raise ValueError("LIVEALIGN_KAFKA is not set: a cluster has no embedded broker")
        options = actor_options(args)
        self.actors: dict[str, Any] = {}
        if args.canary:
            controller = settings.controller_config(settings.kafka)
            canary = CanaryActor.options(**options["canary"]).remote(  # type: ignore[attr-defined]
                controller, settings.canary_metrics_port, settings.metrics_host
            )
            canary.loop.remote()
            self.actors["canary"] = canary
        if args.trainer:
            config = settings.trainer_config(resolve_model(settings), settings.kafka)
            trainer = TrainerActor.options(**options["trainer"]).remote(  # type: ignore[attr-defined]
                config, settings.trainer_metrics_port, ServeSampler(APP_NAME), settings.metrics_host
            )
            trainer.loop.remote()
            self.actors["trainer"] = trainer
        log.info("learning loop started: %s", ", ".join(self.actors) or "nothing")

    def check_health(self) -> None:
        """Unhealthy when an actor died: Serve then replaces this replica, and the new one
        starts both actors again (the trainer resumes from the store and the registry)."""
        for name, actor in self.actors.items():
            try:
                ray.get(actor.__ray_ready__.remote(), timeout=30)
            except Exception as exc:
                raise RuntimeError(f"the {name} actor is gone: {exc}") from exc

    def __del__(self) -> None:
        for actor in self.actors.values():
            with contextlib.suppress(Exception):  # it may be mid-round: the kill ends that
                ray.get(actor.stop.remote(), timeout=5)
            ray.kill(actor)


def loop(args: dict[str, Any]) -> Application:
    """The trainer and canary controller (``import_path: livealign.cluster:loop``)."""
    return LearningLoop.bind(LoopArgs.model_validate(args))  # type: ignore[attr-defined]
