"""Deployment artifacts (Dockerfile, Helm chart, dashboard, alerts, compose) checked with the real
tools that ``python -m devtools.tools install-all`` provides."""
