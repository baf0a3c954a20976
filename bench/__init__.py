"""Benchmarks of klag-pipeline on a real local Kafka (issue 9). Not part of the test suite.

``python -m bench run --preset small`` measures one preset and writes ``bench/results/``;
``python -m bench soak`` runs the long churn test; ``python -m bench report`` regenerates the
table in ``docs/benchmarks.md``; ``python -m bench.proxy`` is the request-counting proxy alone.
"""
