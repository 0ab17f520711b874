"""Faust agents and, beside them, the pure detectors they call."""
