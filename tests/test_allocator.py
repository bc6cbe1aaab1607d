"""keep_freed_memory: a training process reuses the pages of freed feature maps instead of faulting in
new ones every step (glibc)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Ten maps of 4-16 MB alive together, then freed, as in a CPU training step (88 MB: 22,528 pages touched per
# cycle): page faults per cycle after the helper's settings and two warm-up cycles. glibc's own defaults vary
# with the process's history (its mmap threshold adapts), so only the helper's behaviour is asserted.
PAGES_PER_CYCLE = (4 * 4 + 3 * 8 + 3 * 16) * 2**20 // 4096
PROBE = """
import json, resource, torch
from narrative_grounding.training.allocator import keep_freed_memory

kept = keep_freed_memory()

def cycle():
    maps = [torch.ones(2 ** (20 + i % 3)) for i in range(10)]
    del maps

cycle(); cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print(json.dumps({"kept": kept, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_feature_maps_are_reused_without_page_faults():
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        environment.pop(name, None)  # nothing but the helper sets the allocator up
    completed = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=environment, check=True
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["kept"] is True
    # the freed maps' pages are reused: a cycle faults in under 5% of the pages it touches
    assert result["faults"] < PAGES_PER_CYCLE / 20
