"""The building blocks of LiveAlign's dashboards (panels, variables, annotations, query
shapes), on top of Grafana's own grafana-foundation-sdk. Every panel and query reads the
``${datasource}`` variable, so an import works on any Grafana with a Prometheus data source."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as d
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common as c
from grafana_foundation_sdk.models import dashboard as dm

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
ALL = ".*"  # what an "All" selection stands for in a `label=~"$var"` matcher

Query = tuple[str, str]  # (PromQL, legend)
Panel = cogbuilder.Builder[dm.Panel]
RATE = "[$__rate_interval]"
DASHED = dm.DynamicConfigValue("custom.lineStyle", {"fill": "dash", "dash": [10, 10]})


def datasource_variable() -> d.DatasourceVariable:
    return d.DatasourceVariable("datasource").label("Data source").type("prometheus")


def label_variable(name: str, label: str, metric: str, description: str) -> d.QueryVariable:
    """A multi-value ``$name`` with every value of ``metric``'s ``name`` label, and All."""
    return (
        d.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(f"label_values({metric}, {name})")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(ALL)
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def targets(queries: list[Query], instant: bool = False) -> list[prometheus.Dataquery]:
    out = []
    for i, (expr, legend) in enumerate(queries):
        q = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i))
        out.append((q.instant() if instant else q.range()).datasource(DATASOURCE))
    return out


def graph(
    title: str,
    description: str,
    queries: list[Query],
    unit: str = "short",
    width: int = 8,
    bars: bool = False,
) -> timeseries.Panel:
    """A time series panel; ``bars`` for counts per interval (decisions, rounds)."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(targets(queries))  # type: ignore[arg-type]
        .unit(unit)
        .span(width)
        .height(8)
        .fill_opacity(10)
        .span_nulls(False)
    )
    if bars:
        stacked = cb.StackingConfig().mode(c.StackingMode.NORMAL)
        panel = panel.draw_style(c.GraphDrawStyle.BARS).fill_opacity(80).stacking(stacked)
    return panel


def latest(title: str, description: str, queries: list[Query], unit: str = "short") -> stat.Panel:
    """A stat panel: each series' latest value."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(targets(queries, instant=True))  # type: ignore[arg-type]
        .unit(unit)
        .span(8)
        .height(8)
    )


class PromAnnotation(dm.AnnotationQuery):
    """A Prometheus annotation. The SDK's model knows only ``expr``; Grafana's Prometheus
    data source also reads these: the event's title and tags from the series' labels,
    and the query step (an event is a step where the expression has a value)."""

    def __init__(self, title: str, tags: str, step: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.title_format, self.tag_keys, self.step = title, tags, step

    def to_json(self) -> dict[str, object]:
        return {
            **super().to_json(),
            "titleFormat": self.title_format,
            "tagKeys": self.tag_keys,
            "step": self.step,
            "useValueForTime": False,
        }


class Annotation(cogbuilder.Builder[dm.AnnotationQuery]):
    def __init__(self, name: str, expr: str, *, color: str, title: str, tags: str) -> None:
        self._internal = PromAnnotation(
            title, tags, "1m", name=name, datasource=DATASOURCE, expr=expr, icon_color=color
        )

    def build(self) -> dm.AnnotationQuery:
        return self._internal


# --- query shapes ---------------------------------------------------------------------


def selector(metric: str, match: str = "") -> str:
    """The series of ``metric`` (a sample name as scraped) that ``match`` selects.

    vLLM names its metrics ``vllm:...``. prometheus_client's OpenMetrics output, which
    Prometheus 2 asks for, writes their samples with the colon as an underscore (the
    metadata keeps it: prometheus/client_python#1177), its text output keeps the colon:
    a vLLM metric is matched under both names."""
    if metric.startswith("vllm:"):
        name = f'__name__=~"vllm[:_]{metric.removeprefix("vllm:")}"'
        return f"{{{name}, {match}}}" if match else f"{{{name}}}"
    return f"{metric}{{{match}}}" if match else metric


def rate(metric: str, match: str = "", by: str = "") -> str:
    """The per-second rate of a counter, summed (``by`` the labels given)."""
    series = selector(metric, match)
    return f"sum by ({by}) (rate({series}{RATE}))" if by else f"sum(rate({series}{RATE}))"


def gauge(metric: str, match: str = "", by: str = "", agg: str = "max") -> str:
    """A gauge across the processes that export it (``by`` the labels given)."""
    series = selector(metric, match)
    return f"{agg} by ({by}) ({series})" if by else f"{agg}({series})"


def ratio(numerator: str, denominator: str) -> str:
    return f"{numerator} / {denominator}"


def quantiles(
    metric: str, match: str = "", by: str = "", qs: tuple[float, ...] = (0.5, 0.9, 0.99)
) -> list[Query]:
    """A histogram's quantiles (``by`` the labels given), one query each."""
    labels = [label.strip() for label in by.split(",") if label.strip()]
    legend = " / ".join(f"{{{{{label}}}}}" for label in labels)
    buckets = rate(f"{metric}_bucket", match, ", ".join(["le", *labels]))
    return [(f"histogram_quantile({q:g}, {buckets})", f"p{q * 100:g} {legend}".strip()) for q in qs]


def events(metric: str, match: str, by: str) -> str:
    """A counter's increments as annotation events. A counter's first increment makes a
    new series at 1, which ``increase`` cannot see (it needs two samples): a series that
    did not exist two minutes ago counts as an event too."""
    now = f"{metric}{{{match}}}"
    return (
        f"sum by ({by}) (increase({now}[2m])) > 0 or sum by ({by}) ({now} unless {now} offset 2m)"
    )
