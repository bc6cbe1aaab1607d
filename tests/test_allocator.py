"""keep_freed_memory: a training process reuses the pages of freed feature maps instead of faulting in
new ones every step (glibc)."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Ten maps of 4-16 MB alive together, then freed, as in a CPU training step; page faults per cycle.
PROBE = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from narrative_grounding.training.allocator import keep_freed_memory
    assert keep_freed_memory()

def cycle():
    maps = [torch.ones(2 ** (20 + i % 3)) for i in range(10)]
    del maps

cycle(); cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def _faults_per_cycle(mode: str) -> float:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        environment.pop(name, None)  # the probe compares glibc's defaults with the helper's settings
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=environment, check=True
    )
    return float(completed.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or "libc.so" not in (ctypes.util.find_library("c") or ""),
    reason="mallopt is glibc's",
)
def test_freed_feature_maps_are_reused_without_page_faults():
    default = _faults_per_cycle("default")
    kept = _faults_per_cycle("keep")
    assert default > 500  # glibc unmaps (or trims) the freed maps: every cycle faults their pages in again
    assert kept < default / 20
