"""The on-disk cache of generated synthetic datasets: one folder per (level, sizes, seed), generated once.

Training, evaluation, the demo and the benchmarks ask for a synthetic set by its settings; the first
caller generates it, later ones (and other processes) read the finished folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .generator import generate_synthetic_dataset

#: Written last into a generated synthetic folder: a folder without it is a half-written one.
SYNTHETIC_COMPLETE = "GENERATED"


def default_cache_root() -> Path:
    """~/.cache/narrative_grounding (or $NARRATIVE_GROUNDING_CACHE, or $XDG_CACHE_HOME/narrative_grounding)."""
    if os.environ.get("NARRATIVE_GROUNDING_CACHE"):
        return Path(os.environ["NARRATIVE_GROUNDING_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "narrative_grounding"


def synthetic_data_dir(
    level: str,
    num_train: int,
    num_validation: int,
    image_size: int,
    seed: int,
    root: str | os.PathLike | None = None,
) -> Path:
    """The folder a synthetic dataset with these settings is generated into (one folder per setting)."""
    root = Path(root) if root is not None else default_cache_root() / "synthetic"
    return root / f"{level}-{image_size}px-train{num_train}-val{num_validation}-seed{seed}"


def ensure_synthetic_data(
    level: str,
    *,
    num_train: int,
    num_validation: int,
    image_size: int,
    seed: int,
    root: str | os.PathLike | None = None,
    num_workers: int | None = None,
    progress: bool = False,
) -> Path:
    """Generates the synthetic dataset in the official layout unless it is already there; returns its folder.

    Generation writes into a temporary sibling folder renamed into place at the end, so an interrupted run
    never leaves a half-written dataset that a later run would trust.
    """
    target = synthetic_data_dir(level, num_train, num_validation, image_size, seed, root)
    if (target / SYNTHETIC_COMPLETE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        generate_synthetic_dataset(
            staging,
            num_train=num_train,
            num_validation=num_validation,
            image_size=image_size,
            level=level,
            seed=seed,
            num_workers=num_workers,
            progress=progress,
        )
        (staging / SYNTHETIC_COMPLETE).write_text(f"level={level} seed={seed}\n")
        if target.exists():  # a stale, incomplete folder from an interrupted run
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
