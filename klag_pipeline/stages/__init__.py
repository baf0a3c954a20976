"""The per-cluster stages, in pipeline order: discovery → committed_offsets → watermarks →
timestamps → calculation. Each is a class with ``name`` and ``async process(event) -> event``;
:func:`klag_pipeline.stages.loop.run_stage` connects one to its channels."""
