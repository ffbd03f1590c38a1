"""The catalogue of the metrics LiveAlign's scrape endpoints carry.

LiveAlign's own are read from the prometheus_client objects in ``monitoring.metrics``;
the vLLM engine's, of those the dashboards use, from the definitions in the installed
vLLM's source (``vllm/v1/metrics/loggers.py``). Neither is a hand-written list, so the
README table (``python -m monitoring.catalog``) cannot drift from what is exported.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from monitoring import metrics

# The vLLM engine metrics the dashboards query, by their defined names (a test keeps
# this list equal to what the dashboards use). vLLM registers them with
# prometheus_client in each serving replica, so they come on the same /metrics.
VLLM_METRICS = (
    "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:prefix_cache_hits",
    "vllm:prefix_cache_queries",
    "vllm:request_queue_time_seconds",
)
VLLM_SOURCE = "vllm/v1/metrics/loggers.py"

# What prometheus_client writes for each type, after the defined name. The `_created`
# timestamps it also writes are left out: nothing should query them.
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


@dataclass(frozen=True)
class Metric:
    name: str  # as defined; a counter's without `_total`
    type: str  # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str
    source: str  # "livealign" or where vLLM defines it

    @property
    def scraped(self) -> str:
        """The name the README shows: a counter's with `_total`, a histogram's base name."""
        return self.name + ("_total" if self.type == "counter" else "")

    @property
    def series(self) -> tuple[str, ...]:
        """Every sample name Prometheus may store for it (what a query may select). A name
        with a colon (vLLM's) also with an underscore: prometheus_client's OpenMetrics
        output, which Prometheus 2 asks for, writes it so (prometheus/client_python#1177)."""
        names = [self.name + suffix for suffix in SUFFIXES[self.type]]
        return (*names, *(name.replace(":", "_") for name in names if ":" in name))


def livealign_metrics() -> list[Metric]:
    """Every metric object in ``monitoring.metrics``, in the order defined there."""
    out = []
    for obj in vars(metrics).values():
        if isinstance(obj, Counter | Gauge | Histogram):
            # _name, _type, _labelnames, _documentation: prometheus_client has no public
            # accessor for a metric's label names before it has children.
            labels = tuple(obj._labelnames)
            out.append(Metric(obj._name, obj._type, labels, obj._documentation, "livealign"))
    return out


@cache
def vllm_metrics() -> list[Metric]:
    """The ``VLLM_METRICS``, as the installed vLLM defines them."""
    spec = importlib.util.find_spec("vllm")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("vllm is not installed: its metric definitions cannot be read")
    tree = ast.parse((Path(spec.submodule_search_locations[0]) / VLLM_SOURCE[5:]).read_text())
    found = {m.name: m for m in _vllm_definitions(tree)}
    missing = sorted(set(VLLM_METRICS) - found.keys())
    if missing:
        raise RuntimeError(f"{VLLM_SOURCE} no longer defines {missing}")
    return [found[name] for name in sorted(VLLM_METRICS)]


_VLLM_TYPES = {"_counter_cls": "counter", "_gauge_cls": "gauge", "_histogram_cls": "histogram"}


def _vllm_definitions(tree: ast.Module) -> list[Metric]:
    """Each ``self._<type>_cls(name=..., documentation=..., labelnames=...)`` call whose
    arguments are literals or list variables assigned a literal in the same file."""
    lists: dict[str, list[str]] = {}
    for node in ast.walk(tree):  # `labelnames = ["model_name", "engine"]` and the like
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            elts = node.value.elts
            values = [e.value for e in elts if isinstance(e, ast.Constant) and type(e.value) is str]
            for target in node.targets:
                if isinstance(target, ast.Name) and len(values) == len(elts):
                    lists[target.id] = values

    def labels(node: ast.expr) -> list[str]:
        if isinstance(node, ast.Name):
            return list(lists[node.id])
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return labels(node.left) + labels(node.right)
        return list(ast.literal_eval(node))

    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        kind = _VLLM_TYPES.get(node.func.attr)
        kw = {k.arg: k.value for k in node.keywords}
        if kind is None or not isinstance(kw.get("name"), ast.Constant):
            continue
        try:
            names = tuple(labels(kw["labelnames"])) if "labelnames" in kw else ()
        except (KeyError, ValueError):  # labels made at run time: not one the dashboards use
            continue
        doc = ast.literal_eval(kw["documentation"])
        out.append(Metric(ast.literal_eval(kw["name"]), kind, names, doc, VLLM_SOURCE))
    return out


def catalog() -> list[Metric]:
    return livealign_metrics() + vllm_metrics()


def series() -> dict[str, Metric]:
    """Every scraped sample name, to the metric it belongs to."""
    return {name: m for m in catalog() for name in m.series}


def _row(m: Metric) -> str:
    labels = ", ".join(f"`{label}`" for label in m.labels)
    what = m.help.replace("|", "\\|")  # a bar would end the cell
    return f"| `{m.scraped}` | {m.type} | {labels} | {what} |"


HEADER = "| metric | type | labels | what |\n|---|---|---|---|"


def markdown_table() -> str:
    """LiveAlign's metrics, then the vLLM engine's the dashboards use: the README's."""
    ours = "\n".join(_row(m) for m in livealign_metrics())
    vllm = "\n".join(_row(m) for m in vllm_metrics())
    return (
        f"{HEADER}\n{ours}\n\n"
        "The vLLM engine's own metrics that the dashboards use, which each serving replica "
        f"exports with LiveAlign's (vLLM defines them in `{VLLM_SOURCE}`). Where Prometheus "
        "reads prometheus_client's OpenMetrics output (Prometheus 2 asks for it), it stores "
        "them with an underscore for the colon (`vllm_num_preemptions_total`); the "
        "dashboards match both."
        f"\n\n{HEADER}\n{vllm}\n"
    )


if __name__ == "__main__":
    print(markdown_table(), end="")
