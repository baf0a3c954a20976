"""``python -m klag_pipeline`` — the same command as the ``klag-pipeline`` console script."""

from klag_pipeline.cli import main

if __name__ == "__main__":
    main()
