"""The alert rules (helm/livealign/files/alerts.yaml): promtool checks them and runs their
unit tests (helm/livealign/files/alerts.test.yaml); every alert carries what an operator
needs, links to its own runbook section, is tested firing and not firing, and the urgent
ones are proven to fire within one ``for`` window plus one evaluation interval of the
problem's onset."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
RULES = ROOT / "helm/livealign/files/alerts.yaml"  # the one source: the chart embeds it
TESTS = ROOT / "helm/livealign/files/alerts.test.yaml"
RUNBOOK = MONITORING / "RUNBOOK.md"
RUNBOOK_PATH = "monitoring/RUNBOOK.md"  # runbook_url: this path in the repository + anchor
SEVERITIES = {"critical", "warning"}
# A bad version, a stalled pipeline, a spam wave: an operator must hear of these within
# one `for` window plus one evaluation interval.
URGENT = ("AdapterSwapRefused", "CanaryRolledBack", "FeedbackPipelineStalled", "FeedbackDropSpike")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: `make system` installs it (Debian's prometheus)")
    return subprocess.run(
        [path, *args], capture_output=True, text=True, timeout=300, cwd=MONITORING
    )


def alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def seconds(duration: str) -> int:
    """A Prometheus duration ("90s", "2h1m", "1d") in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    parts = re.findall(r"(\d+)([smhdw])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def runbook_sections() -> dict[str, str]:
    """Each second-level section of the runbook by its anchor."""
    parts = re.split(r"^## (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    return {slug(title): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def cases() -> dict[str, dict[str, dict[str, set[int]]]]:
    """alert -> test group name -> {"firing": eval times, "quiet": eval times}."""
    out: dict[str, dict[str, dict[str, set[int]]]] = defaultdict(dict)
    for group in yaml.safe_load(TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            kind = "firing" if case["exp_alerts"] else "quiet"
            times = out[case["alertname"]].setdefault(
                group["name"], {"firing": set(), "quiet": set()}
            )
            times[kind].add(seconds(case["eval_time"]))
    return out


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_says_how_bad_what_and_where_to_look() -> None:
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        for key in ("summary", "description", "runbook_url"):
            assert rule["annotations"].get(key, "").strip(), f"{name} has no {key}"


def test_every_runbook_url_is_the_alerts_own_section() -> None:
    sections = runbook_sections()
    for name, rule in alerts().items():
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == RUNBOOK_PATH, name
        assert anchor == kebab(name), name
        assert anchor in sections, f"{RUNBOOK_PATH} has no section #{anchor}"
        assert f"`{name}`" in sections[anchor], f"#{anchor} does not name {name}"
    # and the runbook has no section for an alert that is gone
    assert set(sections) == {kebab(name) for name in alerts()}


def test_every_alert_is_tested_firing_and_quiet_on_the_same_series() -> None:
    tested = cases()
    assert set(tested) <= set(alerts()), "a test names an alert that does not exist"
    for name in alerts():
        groups = tested.get(name, {})
        both = [g for g, times in groups.items() if times["firing"] and times["quiet"]]
        assert both, f"{name}: no test group where it both fires and must not"


@pytest.mark.parametrize("name", URGENT)
def test_an_urgent_alert_fires_within_its_for_window_and_one_evaluation(name: str) -> None:
    """Each test group of the alert that names its onset ("onset 11m") asserts it firing
    at onset + for + one evaluation interval, and not firing at onset + for or the
    evaluation before."""
    interval = seconds(yaml.safe_load(TESTS.read_text())["evaluation_interval"])
    hold = seconds(alerts()[name].get("for", "0s"))
    timed = {
        group: times for group, times in cases()[name].items() if re.search(r"\bonset \d", group)
    }
    assert timed, f"{name}: no test group names its onset"
    for group, times in timed.items():
        found = re.search(r"\bonset (\w+)", group)
        assert found is not None
        deadline = seconds(found.group(1)) + hold
        assert deadline + interval in times["firing"], f"{group}: not asserted firing in time"
        assert times["quiet"] & {deadline - interval, deadline}, f"{group}: no quiet case before"
