"""The shared core of civic-iot: settings, logging, the device registry, the topology,
the message contracts, storage and retry. It imports no service (README "Architecture")."""
