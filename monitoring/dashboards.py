"""LiveAlign's Grafana dashboards, as code: ``python -m monitoring.dashboards`` writes
them to ``helm/livealign/files/dashboards/*.json`` (``--check``: exit 1 if the files there differ).

Two dashboards. *Serving and feedback* puts the serving metrics next to what users think
of the answers, per adapter version (``$adapter``) and canary arm (``$arm``): traffic,
latency, the vLLM engine, feedback, the canary's score, weight and decisions
(``serving_panels``). *Pipeline and training* follows the feedback from the producer
through the stream processor and the fusion weights to the trainer's rounds
(``pipeline_panels``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as d
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from monitoring import pipeline_panels as pp
from monitoring import serving_panels as sp
from monitoring.panels import Annotation, Panel, datasource_variable, events, label_variable

# In the Helm chart, which embeds them as ConfigMaps (Helm reads files inside a chart only).
OUT = Path(__file__).resolve().parents[1] / "helm/livealign/files/dashboards"
Rows = dict[str, list[Panel]]
# The rounds worth a mark on every graph (a skipped one changed nothing).
ENDED = 'outcome=~"published|rejected|failed"'


def _dashboard(uid: str, title: str, description: str, rows: Rows) -> d.Dashboard:
    board = (
        d.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["livealign"])
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .link(
            d.DashboardLink("LiveAlign")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["livealign"])
            .as_dropdown(False)
            .include_vars(True)
            .keep_time(True)
        )
        .with_variable(datasource_variable())
        .annotation(
            Annotation(
                "Training rounds",
                events("livealign_trainer_rounds_total", ENDED, "outcome"),
                color="blue",
                title="training round: {{outcome}}",
                tags="outcome",
            )
        )
    )
    for title, panels in rows.items():
        board = board.with_row(d.Row(title))
        for panel in panels:
            board = board.with_panel(panel)
    return board


def serving() -> d.Dashboard:
    rows = {
        "Traffic and errors": sp.traffic(),
        "Latency, TTFT and tokens/s": sp.latency(),
        "vLLM engine": sp.engine(),
        "Feedback": sp.feedback(),
        "Canary: fused score": sp.canary_score(),
        "Canary: weight and decisions": sp.canary_rollout(),
    }
    description = (
        "Serving metrics next to what users think of the answers, per adapter version and "
        "canary arm."
    )
    decisions = events(
        "livealign_canary_decisions_total",
        f'{sp.ADAPTER}, action!="hold"',
        "adapter, action, reason",
    )
    return (
        _dashboard("livealign-serving", "LiveAlign: serving and feedback", description, rows)
        .with_variable(
            label_variable(
                "adapter",
                "Adapter version",
                "livealign_chat_requests_total",
                'The LoRA adapter version that answered ("base" for none).',
            )
        )
        .with_variable(
            label_variable(
                "arm",
                "Canary arm",
                "livealign_chat_requests_total",
                "The canary arm a conversation was routed to (stable or canary).",
            )
        )
        .annotation(
            Annotation(
                "Canary decisions",
                decisions,
                color="orange",
                title="canary {{adapter}}: {{action}}",
                tags="adapter,action,reason",
            )
        )
    )


def pipeline() -> d.Dashboard:
    rows = {
        "Fusion weights": pp.fusion(),
        "Trainer rounds": pp.trainer(),
        "Stream processor": pp.processor(),
        "Producer": pp.producer(),
    }
    description = (
        "The feedback's way from the producer through the stream processor and the fusion "
        "weights to the trainer's rounds."
    )
    weights = "livealign_fusion_weight"
    return (
        _dashboard("livealign-pipeline", "LiveAlign: pipeline and training", description, rows)
        .with_variable(
            label_variable(
                "scenario",
                "Scenario",
                weights,
                "The fusion scenario: which signals a response has.",
            )
        )
        .with_variable(label_variable("signal", "Signal", weights, "A feedback signal."))
        .with_variable(
            label_variable(
                "adapter",
                "Adapter version",
                "livealign_sampler_calls_total",
                "The adapter version the trainer's teacher sampled from.",
            )
        )
    )


DASHBOARDS: dict[str, Callable[[], d.Dashboard]] = {
    "livealign-serving.json": serving,
    "livealign-pipeline.json": pipeline,
}


def render() -> dict[str, str]:
    """Each dashboard's file name and JSON text: sorted keys and panel ids in order, so
    the same code always writes the same bytes."""
    out = {}
    for name, build in DASHBOARDS.items():
        dashboard = build().build()
        for i, panel in enumerate(dashboard.panels or [], start=1):
            panel.id_val = i
        out[name] = JSONEncoder(sort_keys=True, indent=2).encode(dashboard) + "\n"
    return out


def stale(out: Path = OUT) -> list[str]:
    """The dashboard files in ``out`` that differ from what the code makes, or are extra."""
    made, on_disk = render(), {p.name: p.read_text() for p in out.glob("*.json")}
    return sorted(
        name for name in made.keys() | on_disk.keys() if made.get(name) != on_disk.get(name)
    )


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression in a dashboard's JSON: its panels' and its annotations'."""
    return [expr for _, expr in titled_queries(dashboard)]


def titled_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, expression) of every panel query, a collapsed row's panels included, and
    of every annotation query (titled by its name)."""

    def walk(panels: list[dict[str, Any]]) -> list[tuple[str, str]]:
        found = []
        for panel in panels:
            found += [(panel["title"], t["expr"]) for t in panel.get("targets", []) if "expr" in t]
            found += walk(panel.get("panels", []))  # a collapsed row keeps its panels
        return found

    notes = dashboard.get("annotations", {}).get("list", [])
    return walk(dashboard["panels"]) + [(a["name"], a["expr"]) for a in notes if "expr" in a]


def load(name: str, out: Path = OUT) -> dict[str, Any]:
    """A checked-in dashboard's JSON."""
    loaded: dict[str, Any] = json.loads((out / name).read_text())
    return loaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write LiveAlign's Grafana dashboards.")
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ")
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder (default {OUT})")
    args = parser.parse_args(argv)
    if args.check:
        differ = stale(args.out)
        if differ:
            print(f"out of date: {', '.join(differ)} (run: python -m monitoring.dashboards)")
        return 1 if differ else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (args.out / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
