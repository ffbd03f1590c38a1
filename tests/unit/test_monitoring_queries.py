"""Dashboard and rule queries made concrete: every variable form Grafana fills in."""

from __future__ import annotations

from typing import Any

import pytest

from monitoring.queries import (
    Query,
    UnknownVariable,
    concrete,
    dashboard_queries,
    dashboard_variables,
    rule_queries,
)

DASHBOARD: dict[str, Any] = {
    "templating": {
        "list": [
            {"name": "datasource", "type": "datasource"},
            {"name": "adapter", "type": "query", "includeAll": True},
            {"name": "arm", "type": "custom", "allValue": "stable|canary"},
            {"name": "q", "type": "constant", "query": "0.95"},
        ]
    },
    "panels": [
        {"type": "row", "title": "Top", "panels": []},
        {
            "title": "Requests",
            "targets": [
                {"expr": 'rate(x{adapter=~"$adapter"}[$__rate_interval])'},
                {"refId": "B"},  # no expr: an expression or a note, nothing to evaluate
            ],
        },
        {
            "type": "row",
            "title": "Collapsed",
            "collapsed": True,
            "panels": [
                {"title": "Inner", "targets": [{"expr": 'y{arm=~"${arm:regex}"}', "hide": True}]}
            ],
        },
    ],
    "rows": [{"panels": [{"title": "Old", "targets": [{"expr": "histogram_quantile($q, z)"}]}]}],
}


def test_every_variable_form_is_replaced() -> None:
    values = {"adapter": ".*", "__range": "300s", "job": "serving"}
    assert concrete('a{adapter=~"$adapter"}[$__range]', values) == 'a{adapter=~".*"}[300s]'
    assert concrete('a{adapter=~"${adapter}"}', values) == 'a{adapter=~".*"}'
    assert concrete('a{adapter=~"${adapter:pipe}"}', values) == 'a{adapter=~".*"}'
    assert concrete('up{job="[[job]]"}', values) == 'up{job="serving"}'
    # The longest name is the variable, not a known prefix of it.
    with pytest.raises(UnknownVariable, match=r"\$__range_s"):
        concrete("x > $__range_s", values)


def test_a_dashboards_variables_take_their_all_values() -> None:
    values = dashboard_variables(DASHBOARD, 60)
    assert values["adapter"] == ".*"
    assert values["arm"] == "stable|canary"
    assert values["q"] == "0.95"
    assert values["__rate_interval"] == values["__interval"] == values["__range"] == "60s"
    assert values["__range_s"] == "60"


def test_every_panel_query_nested_or_not_is_found() -> None:
    assert dashboard_queries("d.json", DASHBOARD, 60) == [
        Query("d.json", "Requests", 'rate(x{adapter=~".*"}[60s])'),
        Query("d.json", "Inner", 'y{arm=~"stable|canary"}'),
        Query("d.json", "Old", "histogram_quantile(0.95, z)"),
    ]


def test_an_unknown_variable_is_an_error() -> None:
    bad = {"panels": [{"title": "P", "targets": [{"expr": 'x{a="$nope"}'}]}]}
    with pytest.raises(UnknownVariable, match="nope"):
        dashboard_queries("d.json", bad, 60)


def test_rule_queries_name_alerts_and_recordings() -> None:
    rules = {
        "groups": [
            {"name": "a", "rules": [{"alert": "Down", "expr": "up == 0", "for": "1m"}]},
            {"name": "b", "rules": [{"record": "job:x:rate5m", "expr": "rate(x[5m])"}]},
        ]
    }
    assert rule_queries("r.yaml", rules) == [
        Query("r.yaml", "Down", "up == 0"),
        Query("r.yaml", "job:x:rate5m", "rate(x[5m])"),
    ]
