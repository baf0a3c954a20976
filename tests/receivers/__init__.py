"""Real peers for the sinks' protocols, started by the tests (never mocks)."""
