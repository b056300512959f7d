"""Connectors: the source protocol (source), consuming a source (consume), file sources (files)."""
