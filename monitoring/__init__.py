"""Metric definitions (Prometheus): every metric LiveAlign exports, defined once."""
