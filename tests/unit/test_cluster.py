"""livealign.cluster, the Serve applications a RayService runs: what their builders refuse
(the rest runs only on a Ray cluster with the chart's worker groups)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from livealign import cluster


def test_the_chat_app_takes_no_args_and_needs_a_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="takes no args"):
        cluster.serving({"replicas": 2})
    monkeypatch.delenv("LIVEALIGN_KAFKA", raising=False)
    with pytest.raises(ValueError, match="LIVEALIGN_KAFKA"):
        cluster.serving({})


def test_the_loop_refuses_a_misspelled_arg() -> None:
    with pytest.raises(ValidationError):
        cluster.loop({"trainer_cpu": 2})
    with pytest.raises(ValidationError):
        cluster.loop({"trainer_gpus": -1})


def test_the_actors_go_to_the_trainer_pod_and_take_its_gpus() -> None:
    options = cluster.actor_options(cluster.LoopArgs(trainer_cpus=3, trainer_gpus=1))
    assert options["trainer"]["num_cpus"] == 3 and options["trainer"]["num_gpus"] == 1
    for opts in options.values():
        assert set(opts["resources"]) == {cluster.TRAINER_RESOURCE}
    assert "num_gpus" not in cluster.actor_options(cluster.LoopArgs())["trainer"]
