"""Pure, I/O-free detectors: plain inputs and state in, findings and new state out."""
