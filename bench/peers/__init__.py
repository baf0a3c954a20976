"""``python -m bench compare``: klag-pipeline beside klag-exporter, KMinion and kafka_exporter on
one broker and one scenario, through one counting proxy (issue 17). See docs/benchmarks.md,
"Peers, side by side"."""
