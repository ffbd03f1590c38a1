"""Where log lines go: all of them to the log files; to the terminal of ``livealign up``,
by default, only what someone watching it needs. Every LiveAlign process sets up its
logging here (``setup``), so every record is written in one format, ``FORMAT``.

What the terminal shows unless ``--verbose``: a line for each part as it starts, every
warning and error (tracebacks included), each training round and each canary decision.
Those are the records of level WARNING and above, and the INFO records of the loggers in
``EVENTS``. Everything else (Ray Serve's access log, the Kafka clients' connection
chatter, vLLM's start-up report, training progress bars) goes to the log files only, and
so do the warnings in ``EXPECTED``, which every start or stop of the stack prints.

Three kinds of output reach the terminal, and each passes the same rule:
- the driver's own log records (``setup``): a filter on its stderr handler;
- what Ray forwards from its workers' stdout and stderr (replicas, the trainer and the
  canary controller, the processes Ray starts itself), which arrives as text lines: Ray
  has no public hook to filter them (``log_to_driver`` is all or nothing), so
  ``quiet_worker_output`` wraps the handler that prints them; the workers write their
  records in ``FORMAT`` so a line says its level and logger (``WorkerLines``);
- a child process's log file (the stream processor): ``LogFollower`` reads what was
  appended and passes on the lines ``WorkerLines`` keeps.
Ray's own error reports (a task failed, a worker died) print directly, always.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Loggers whose INFO records are events for the terminal: the stack starting each part,
# the trainer's one line per round, the canary controller's decisions other than "hold".
EVENTS = ("livealign.stack", "trainer.actor", "serving.canary.actor")

# Warnings every start or stop of the local stack prints, about its setting rather than
# this run: vLLM's CPU build without Triton or the preloaded allocators its docs suggest,
# deprecations inside vLLM and torch, vLLM and Ray Serve stopping their processes on
# Ctrl-C. A warning of the same kind with other words still shows.
EXPECTED = re.compile(
    "|".join(
        (
            r"Triton is not installed\. triton-cpu is expected",
            r"Triton is installed, but doesn't include CPU backend",
            r"Model Runner V2 requires Triton",
            r"Reset SSM cache type to float32",
            r"lib(tcmalloc|iomp) is not found in LD_PRELOAD",
            r"Inductor compilation was disabled by user settings",
            r"`torch\.distributed\.reduce_op` is deprecated",
            r"NUMA binding: Using MEMBIND policy",
            r"Passing raw prompts to InputProcessor is deprecated",
            r"\[shutdown\] Process manager: force killing remaining process",
        )
    )
)

# A record in FORMAT: "2025-12-01 14:00:00,123 INFO trainer.actor: round published ...".
_OURS = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    r"(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) (?P<name>[\w.]+): "
)
# Another program's line that says it is a warning or an error: a level word (vLLM's
# "WARNING 12-01 ...", Ray's and Serve's "ERROR ... replica.py"), or Python's
# "UserWarning: ..." and an exception's last line "ValueError: ...".
_ALARM = re.compile(r"\b(WARNING|WARN|ERROR|CRITICAL|FATAL)\b|\b\w*(Warning|Error|Exception): ")


def for_terminal(level: int, name: str) -> bool:
    """Whether a record of this level from this logger is shown without --verbose."""
    return level >= logging.WARNING or any(name == e or name.startswith(e + ".") for e in EVENTS)


class TerminalFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        shown = for_terminal(record.levelno, record.name)
        return shown and EXPECTED.search(record.getMessage()) is None


class TerminalFormatter(logging.Formatter):
    """Short lines: the time and the message; a warning or error also says its level and
    where it comes from."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")
        self._alarm = logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
        )

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            return self._alarm.format(record)
        return super().format(record)


_OWN = "livealign.logs"  # marks the handlers setup() installed, so a second call replaces them


def setup(log_file: Path | None = None, *, quiet: bool = False) -> None:
    """This process's logging: records of level INFO and above, in ``FORMAT``, to
    ``log_file`` (all of them) and to stderr (all, or with ``quiet`` only those
    ``for_terminal``, in short lines). A worker process (no terminal of its own: Ray
    keeps its stderr in a file and forwards it) calls it with neither."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in [h for h in root.handlers if h.get_name() == _OWN]:
        root.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stderr)
    if quiet:
        console.addFilter(TerminalFilter())
        console.setFormatter(TerminalFormatter())
    else:
        console.setFormatter(logging.Formatter(FORMAT))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(log_file)
        to_file.setFormatter(logging.Formatter(FORMAT))
        handlers.append(to_file)
    for handler in handlers:
        handler.set_name(_OWN)
        root.addHandler(handler)


def adopt(name: str) -> None:
    """Send the records of logger ``name``, which keeps them from the root logger, through
    this process's handlers instead of its own: Ray Serve's logger in the driver, whose
    INFO lines would otherwise print on the terminal and go to no file. Nothing happens
    where ``setup`` did not run."""
    ours = [h for h in logging.getLogger().handlers if h.get_name() == _OWN]
    if ours:
        logger = logging.getLogger(name)
        logger.handlers[:] = ours
        logger.propagate = False


class WorkerLines:
    """Which lines of another process's output the quiet terminal shows: records in
    ``FORMAT`` by ``for_terminal``, other lines if they say they are a warning or an
    error, and a traceback whole. A traceback can be split across two reads, so each
    stream (``key``) remembers whether one is going on."""

    def __init__(self) -> None:
        self._in_traceback: dict[Any, bool] = {}

    def keep(self, key: Any, lines: Iterable[str]) -> list[str]:
        kept: list[str] = []
        tb = self._in_traceback.get(key, False)
        for line in lines:
            if line.startswith(_TRACEBACK):
                tb = True
            elif tb and line.strip() and not line[0].isspace():
                tb = False  # not indented: its last line, the exception
                kept.append(line)
                continue
            if tb or _shown(line):
                kept.append(line)
        self._in_traceback[key] = tb
        return kept


# How a traceback, or the next one of a chain, begins.
_TRACEBACK = ("Traceback (most recent call last)", "During handling of", "The above exception")


def _shown(line: str) -> bool:
    if EXPECTED.search(line):
        return False
    ours = _OURS.match(line)
    if ours is not None:
        return for_terminal(logging.getLevelNamesMapping()[ours["level"]], ours["name"])
    return _ALARM.search(line) is not None


def quiet_worker_output() -> bool:
    """Filter the worker output Ray forwards to this driver through ``WorkerLines``
    (after ``ray.init``). Ray has no public hook for it: this wraps the handler Ray's
    driver prints it with, and returns False (leaving the output as it is) where that
    handler is not found, as in another Ray version."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        found = [(name, h) for name, h in list(dispatcher.handlers) if name == "ray_print_logs"]
    except (ImportError, AttributeError, TypeError, ValueError):
        return False
    if len(found) != 1:
        return False
    name, show = found[0]
    dispatcher.remove_handler(name)
    dispatcher.add_handler(name, _filtered(show, WorkerLines()))
    return True


def _filtered(show: Callable[[dict[str, Any]], None], lines: WorkerLines) -> Callable[..., None]:
    def handle(data: dict[str, Any]) -> None:
        kept = lines.keep((data.get("pid"), data.get("is_err")), data.get("lines", []))
        if kept:
            show({**data, "lines": kept})

    return handle


class LogFollower:
    """Reads the lines a log file gained since the last call (from its end at the first),
    at most ``max_bytes`` a call, so a burst cannot hold the caller up for long."""

    def __init__(self, path: Path, max_bytes: int = 1 << 20) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._offset = path.stat().st_size if path.exists() else 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        if not self.path.exists():
            return []
        if self.path.stat().st_size < self._offset:  # truncated or replaced: start over
            self._offset, self._partial = 0, b""
        with self.path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read(self.max_bytes)
        self._offset += len(chunk)
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        return [line.decode(errors="replace") for line in complete]
