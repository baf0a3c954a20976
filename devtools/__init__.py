"""Developer tooling that is not part of the installed ``klag_pipeline`` package."""
