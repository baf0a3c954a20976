"""The exporter's own observability: logging setup (and self-metrics)."""
