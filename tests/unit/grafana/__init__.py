"""Unit tests of the Grafana dashboards and their provisioning payloads (no server)."""
