"""A pipeline whose start fails leaves no process of it running (a leaked worker of a
failed demo kept reporting its devices silent into later runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from civic_iot.settings import Settings
from ops.pipeline import Pipeline


class FailingPipeline(Pipeline):
    """Starts one long-running child, then fails as a child exiting early would."""

    def _start(self, timeout_s: float) -> None:
        self.procs["worker0"] = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)"]
        )
        msg = "alerts exited with 1"
        raise RuntimeError(msg)


def test_a_failed_start_stops_what_it_started(tmp_path: Path) -> None:
    pipeline = FailingPipeline(Settings(), "t.", tmp_path)
    with pytest.raises(RuntimeError, match="alerts exited"):
        pipeline.start()
    proc = pipeline.procs["worker0"]
    assert proc.poll() is not None  # stopped (SIGTERM), not left running
