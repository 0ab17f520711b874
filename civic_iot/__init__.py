"""Shared pieces of civic-iot: settings, the device registry, topic names and the CLI."""
