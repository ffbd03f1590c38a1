"""Dashboard queries as Prometheus sees them, and the metrics they select.

A dashboard's query holds Grafana's variables (``$adapter``, ``$__rate_interval``...),
which Grafana replaces before it sends the query. ``concrete`` does the same, so that the
query can be parsed, checked by promtool or evaluated by a real Prometheus.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import promql_parser

# Grafana's built-in interval variables, with values that are valid durations. Tests and
# checks only need a duration there, not the one Grafana would compute.
INTERVALS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}

_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def concrete(expr: str, values: Mapping[str, str] | None = None) -> str:
    """``expr`` with every ``$name`` / ``${name}`` replaced: intervals by ``INTERVALS``,
    the others by ``values`` (default ``.*``, the dashboards' value for All)."""
    given = {**INTERVALS, **(values or {})}

    def value(match: re.Match[str]) -> str:
        return given.get(match[1] or match[2], ".*")

    return _VARIABLE.sub(value, expr)


def parse(expr: str) -> promql_parser.Expr:
    """The query's syntax tree (intervals made concrete, other variables left in their
    strings); ValueError says what is wrong with a query that is not valid PromQL."""
    return promql_parser.parse(concrete(expr, {k: f"${k}" for k in _names(expr)}))


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    """Every series selector in the query, in the order they appear."""
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(parse(expr), visit)
    return found


def metric_names(expr: str, known: Collection[str] = ()) -> set[str]:
    """The metric names the query selects (see ``selector_names``)."""
    return {name for selector in selectors(expr) for name in selector_names(selector, known)}


def selector_names(selector: promql_parser.VectorSelector, known: Collection[str]) -> set[str]:
    """The selector's metric name; for a ``__name__=~"..."`` matcher, the names among
    ``known`` it matches (or, matching none, the regex itself, so that a check against
    ``known`` fails). A selector that names no metric raises: a dashboard query must."""
    if selector.name:
        return {selector.name}
    for matcher in selector.matchers.matchers:
        if matcher.name == "__name__" and matcher.op == promql_parser.MatchOp.Re:
            pattern = re.compile(matcher.value)  # anchored, as Prometheus anchors it
            return {n for n in known if pattern.fullmatch(n)} or {matcher.value}
        if matcher.name == "__name__" and matcher.op == promql_parser.MatchOp.Equal:
            return {matcher.value}
    raise ValueError(f"a selector without a metric name: {selector}")


def matchers(selector: promql_parser.VectorSelector) -> set[str]:
    """The selector's label matchers as PromQL writes them: ``adapter=~"$adapter"``."""
    return {str(matcher) for matcher in selector.matchers.matchers}


def _names(expr: str) -> set[str]:
    return {m[1] or m[2] for m in _VARIABLE.finditer(expr)} - INTERVALS.keys()
