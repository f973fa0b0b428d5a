"""Observability: typed events, the listener bus, redacted logging and optional metrics."""
