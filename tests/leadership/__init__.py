"""High-availability tests: the elector, both leadership providers, and exporter processes."""
