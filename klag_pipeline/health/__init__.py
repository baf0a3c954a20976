"""Consumer health (issue 14): rates, catch-up time and status per partition, topic and group,
evaluated from the history of the cycles already collected — no Kafka request of its own.

:mod:`.model` the results, :mod:`.rules` the status rule table, :mod:`.evaluator` the bounded
memory across cycles. The evaluation stage (:mod:`klag_pipeline.stages.evaluation`) runs it.
"""
