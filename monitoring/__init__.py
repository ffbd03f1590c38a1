"""Metric definitions (Prometheus), the Grafana dashboard and the alert rules."""
