"""Every PromQL query of the dashboards and alert rules, made concrete for evaluation.

A Grafana panel's query carries template variables Grafana fills in (``$adapter``,
``${arm:regex}``, ``[[job]]``, ``$__rate_interval``...). To evaluate it against a
Prometheus directly, each takes a concrete value: a dashboard variable its "All" value
(``allValue``, else ``.*``), a time variable one window for every query.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# $name, ${name}, ${name:format}, [[name]], [[name:format]]
_VARIABLE = re.compile(
    r"\$\{(?P<braced>\w+)(?::[^}]*)?\}|\[\[(?P<old>\w+)(?::[^\]]*)?\]\]|\$(?P<plain>\w+)"
)
ALL = ".*"  # "All" of a variable used as a regex matcher (=~"$adapter")


@dataclass(frozen=True)
class Query:
    source: str  # the dashboard's or rule file's name
    title: str  # the panel's title, or the alert's / recording rule's name
    expr: str


class UnknownVariable(ValueError):
    pass


def builtin_variables(window_s: int) -> dict[str, str]:
    """Grafana's own time variables, all one window of ``window_s`` seconds."""
    window = f"{window_s}s"
    return {
        "__rate_interval": window,
        "__interval": window,
        "__range": window,
        "__interval_ms": str(window_s * 1000),
        "__range_s": str(window_s),
        "__range_ms": str(window_s * 1000),
    }


def dashboard_variables(dashboard: Mapping[str, Any], window_s: int) -> dict[str, str]:
    """Every variable a query of this dashboard may use, with a concrete value."""
    values = builtin_variables(window_s)
    for var in dashboard.get("templating", {}).get("list", []):
        name = var.get("name")
        if not name:
            continue
        if var.get("type") == "datasource":
            values[name] = "prometheus"  # names the data source; never in a matcher
        elif var.get("type") in ("constant", "textbox"):
            values[name] = str(var.get("query") or var.get("current", {}).get("value") or "")
        elif var.get("type") == "interval":
            values[name] = f"{window_s}s"
        else:  # query, custom: all of its values
            values[name] = var.get("allValue") or ALL
    return values


def concrete(expr: str, variables: Mapping[str, str]) -> str:
    """``expr`` with every template variable replaced; ``UnknownVariable`` names the first
    one ``variables`` lacks (left in, it would match nothing and hide the mistake)."""

    def value(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("old") or match.group("plain")
        if name not in variables:
            raise UnknownVariable(f"${name} in {expr!r}: no such variable")
        return variables[name]

    return _VARIABLE.sub(value, expr)


def panels(dashboard: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every panel, those inside rows (collapsed or not) included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)  # a row keeps its collapsed panels in its own "panels"
    for row in dashboard.get("rows", []):  # the old (pre-5) layout
        yield from panels(row)


def dashboard_queries(name: str, dashboard: Mapping[str, Any], window_s: int) -> list[Query]:
    """The concrete query of every panel target that has one (``expr``)."""
    variables = dashboard_variables(dashboard, window_s)
    return [
        Query(name, panel.get("title", ""), concrete(target["expr"], variables))
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def rule_queries(name: str, rules: Mapping[str, Any]) -> list[Query]:
    """The expression of every alerting and recording rule of a Prometheus rule file."""
    return [
        Query(name, rule.get("alert") or rule.get("record") or "", str(rule["expr"]))
        for group in rules.get("groups", [])
        for rule in group.get("rules", [])
    ]
