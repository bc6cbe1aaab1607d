"""keep_freed_memory: a training process reuses the pages of freed feature maps instead of faulting in
new ones every step (glibc)."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Ten maps of 4-16 MB alive together, then freed, as in a CPU training step: page faults per cycle with
# glibc's defaults, then with the helper's settings (each after two warm-up cycles).
PROBE = """
import json, resource, torch
from narrative_grounding.training.allocator import keep_freed_memory

def cycle():
    maps = [torch.ones(2 ** (20 + i % 3)) for i in range(10)]
    del maps

def faults_per_cycle():
    cycle(); cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        cycle()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5

default = faults_per_cycle()
kept = keep_freed_memory()
print(json.dumps({"default": default, "kept": kept, "with_helper": faults_per_cycle()}))
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or "libc.so" not in (ctypes.util.find_library("c") or ""),
    reason="mallopt is glibc's",
)
def test_freed_feature_maps_are_reused_without_page_faults():
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        environment.pop(name, None)  # the probe starts from glibc's defaults
    completed = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=environment, check=True
    )
    faults = json.loads(completed.stdout.strip().splitlines()[-1])
    assert faults["kept"] is True
    assert faults["default"] > 500  # glibc unmaps (or trims) the freed maps: every cycle faults them in again
    assert faults["with_helper"] < faults["default"] / 20
