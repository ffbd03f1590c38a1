"""monitoring.logs: the quiet terminal of ``livealign up``. Each part starting, warnings,
errors (tracebacks whole), training rounds and canary decisions are shown; the rest
(Serve's access log, Kafka client chatter, vLLM's start-up report, progress bars) only
goes to the log files. The line samples are as Ray forwards them from the workers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray._private.ray_logging import global_worker_stdstream_dispatcher

from monitoring import logs

SHOWN = [
    "2026-12-01 14:20:01,002 INFO trainer.actor: round published: livealign@2 []",
    "2026-12-01 14:20:02,003 INFO serving.canary.actor: canary livealign@2: rollback: worse",
    "2026-12-01 14:20:03,004 WARNING streaming.producer: send to livealign.feedback failed",
    "2026-12-01 14:20:04,005 ERROR serving.adapters: adapter livealign@3 refused as canary",
    "(MainProcess pid=2036) WARNING 12-01 14:13:17 [cpu.py:224] No free KV cache blocks.",
    "WARNING 2026-12-01 14:13:37,018 controller 1947 -- Deployment 'ChatServer' is slow.",
    "/venv/lib/python3.11/site-packages/x.py:139: FutureWarning: `reduce_op` is deprecated",
]
HIDDEN = [
    "2026-12-01 14:20:05,006 INFO kafka.net.manager: Bootstrap complete: ClusterMetadata(...)",
    "2026-12-01 14:20:06,007 INFO trainer.round: published livealign@2 as the canary",
    "INFO 2026-12-01 14:13:58,857 livealign_ChatServer kjpnvm2g 6f1d -- POST /v1/chat 200 9.1ms",
    "(EngineCore pid=2114) INFO 12-01 14:13:25 [core.py:133] Initializing a V1 LLM engine",
    "Triton is installed, but doesn't include CPU backend. Disabling Triton.",
    "Map: 100%|##########| 40/40 [00:00<00:00, 812.33 examples/s]",
    "  warnings.warn(",
    # Warnings every start or stop prints (monitoring.logs.EXPECTED):
    "(MainProcess pid=2036) WARNING 12-01 14:13:17 [cpu.py:224] Triton is not installed. "
    "triton-cpu is expected on x86 CPUs.",
    "(Worker pid=6175) WARNING 12-01 14:22:22 [cpu_worker.py:114] libtcmalloc is not found in "
    "LD_PRELOAD. For best performance, please follow the section `set LD_PRELOAD` ...",
    "(MainProcess pid=9186) WARNING 12-01 14:23:45 [utils.py:653] [shutdown] Process manager: "
    "force killing remaining process EngineCore pid 6090",
]
TRACEBACK = [
    "2026-12-01 14:20:07,008 ERROR trainer.actor: trainer loop",
    "Traceback (most recent call last):",
    '  File "/work/trainer/actor.py", line 58, in loop',
    "    self.run_round()",
    "RuntimeError: out of memory",
]


@pytest.mark.parametrize("line", SHOWN)
def test_warnings_errors_rounds_and_decisions_are_shown(line: str) -> None:
    assert logs.WorkerLines().keep("w", [line]) == [line]


@pytest.mark.parametrize("line", HIDDEN)
def test_the_rest_is_not(line: str) -> None:
    assert logs.WorkerLines().keep("w", [line]) == []


def test_a_traceback_is_shown_whole_even_split_across_reads() -> None:
    lines = logs.WorkerLines()
    info = "2026-12-01 14:20:08,009 INFO kafka.conn: connected"
    assert lines.keep("w", [HIDDEN[0], *TRACEBACK[:3]]) == TRACEBACK[:3]
    assert lines.keep("other", [info]) == []  # another worker's stream: not in a traceback
    assert lines.keep("w", [*TRACEBACK[3:], info]) == TRACEBACK[3:]


@pytest.fixture
def logging_restored() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


def test_the_quiet_terminal_and_the_file_that_gets_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], logging_restored: None
) -> None:
    log_file = tmp_path / "livealign.log"
    logs.setup(log_file, quiet=True)
    logging.getLogger("livealign.stack").info("broker started at 127.0.0.1:9092")
    logging.getLogger("kafka.net.manager").info("Bootstrap complete")
    logging.getLogger("streaming.producer").warning("Kafka unavailable")
    terminal = capsys.readouterr().err.splitlines()
    assert len(terminal) == 2
    assert terminal[0].endswith(" broker started at 127.0.0.1:9092")
    assert terminal[1].endswith(" WARNING streaming.producer: Kafka unavailable")
    written = log_file.read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in written] == [
        "INFO livealign.stack: broker started at 127.0.0.1:9092",
        "INFO kafka.net.manager: Bootstrap complete",
        "WARNING streaming.producer: Kafka unavailable",
    ]
    # What a worker writes (FORMAT) is what the quiet terminal's filter reads.
    assert logs.WorkerLines().keep("w", written) == [written[0], written[2]]


def test_an_adopted_logger_goes_to_the_file_and_the_quiet_filter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], logging_restored: None
) -> None:
    serve = logging.getLogger("alerts.test.serve")  # as Ray Serve's logger in the driver
    serve.propagate = False
    serve.addHandler(logging.StreamHandler())
    logs.setup(tmp_path / "livealign.log", quiet=True)
    logs.adopt(serve.name)
    serve.info('Started Serve in namespace "serve".')
    serve.warning("Deployment 'ChatServer' has 1 replicas that have taken more than 30s")
    [line] = capsys.readouterr().err.splitlines()
    assert "WARNING alerts.test.serve: Deployment 'ChatServer'" in line
    assert "INFO alerts.test.serve: Started Serve" in (tmp_path / "livealign.log").read_text()


def test_verbose_shows_everything_and_a_second_setup_replaces_the_first(
    capsys: pytest.CaptureFixture[str], logging_restored: None
) -> None:
    logs.setup(quiet=True)
    logs.setup()
    logging.getLogger("kafka.net.manager").info("Bootstrap complete")
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(" INFO kafka.net.manager: Bootstrap complete")


def test_rays_forwarded_worker_output_goes_through_the_filter() -> None:
    printed: list[dict[str, Any]] = []
    name = "ray_print_logs"
    saved = list(global_worker_stdstream_dispatcher.handlers)
    global_worker_stdstream_dispatcher.handlers = [(name, printed.append)]  # as ray.init leaves it
    try:
        assert logs.quiet_worker_output()
        batch = {"pid": 7, "is_err": True, "actor_name": "TrainerActor"}
        global_worker_stdstream_dispatcher.emit({**batch, "lines": [HIDDEN[0], SHOWN[0]]})
        global_worker_stdstream_dispatcher.emit({**batch, "lines": [HIDDEN[2]]})
    finally:
        global_worker_stdstream_dispatcher.handlers = saved
    assert printed == [{**batch, "lines": [SHOWN[0]]}]  # nothing at all for an empty batch


def test_without_rays_handler_the_output_is_left_alone() -> None:
    saved = list(global_worker_stdstream_dispatcher.handlers)
    global_worker_stdstream_dispatcher.handlers = []
    try:
        assert not logs.quiet_worker_output()
    finally:
        global_worker_stdstream_dispatcher.handlers = saved


def test_the_follower_reads_what_was_appended_whole_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "processor.log"
    path.write_text("an earlier run\n")
    follower = logs.LogFollower(path)
    assert follower.new_lines() == []
    with path.open("a") as f:
        f.write("one\ntwo\nthr")
    assert follower.new_lines() == ["one", "two"]
    with path.open("a") as f:
        f.write("ee\n")
    assert follower.new_lines() == ["three"]
    path.write_text("new\n")  # replaced by a shorter file: read from its start
    assert follower.new_lines() == ["new"]
    missing = logs.LogFollower(tmp_path / "not-yet.log")
    (tmp_path / "not-yet.log").write_text("first\n")
    assert missing.new_lines() == ["first"]
