"""Where the training data comes from: the official PNG layout, a prepared dataset, or the synthetic set."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import datasets

SYNTHETIC_LEVELS = ("easy", "medium", "hard")
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
    from ..data.synthetic import generate_synthetic_dataset

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


def load_prepared_dataset(
    name_or_path: str, *, cache_dir: str | None = None, revision: str | None = None
) -> datasets.DatasetDict:
    """A prepared PNG dataset: a `save_to_disk` folder, a folder of Parquet files (`export_parquet`), or a
    Hub dataset repo (`push_png_dataset_to_hub`)."""
    path = Path(name_or_path)
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        dataset = datasets.load_from_disk(str(path))
    else:
        dataset = datasets.load_dataset(name_or_path, cache_dir=cache_dir, revision=revision)
    if not isinstance(dataset, datasets.DatasetDict):
        raise ValueError(
            f"{name_or_path} holds a single Dataset; expected a DatasetDict with train/validation splits"
        )
    return dataset


def load_training_data(args: Any, *, main_process_first: Any = None) -> tuple[datasets.DatasetDict, str]:
    """The DatasetDict named by the options (`--data_dir` / `--dataset_name` / `--synthetic`) and a short
    name of the dataset for the model card.

    main_process_first: a context manager factory (`accelerator.main_process_first`) so that only one
    process generates / prepares the data while the others wait and then read the cache.
    """
    import contextlib

    guard = main_process_first() if main_process_first is not None else contextlib.nullcontext()
    from ..data import load_png_dataset

    with guard:
        if args.synthetic is not None:
            data_dir = ensure_synthetic_data(
                args.synthetic,
                num_train=args.synthetic_num_train,
                num_validation=args.synthetic_num_validation,
                image_size=args.synthetic_image_size,
                seed=args.synthetic_seed,
                root=args.synthetic_dir,
            )
            dataset = load_png_dataset(data_dir, cache_dir=args.dataset_cache_dir)
            name = f"png-synthetic-{args.synthetic}"
        elif args.data_dir is not None:
            dataset = load_png_dataset(args.data_dir, cache_dir=args.dataset_cache_dir, progress=True)
            name = "panoptic-narrative-grounding"
        else:
            dataset = load_prepared_dataset(args.dataset_name, cache_dir=args.dataset_cache_dir)
            name = args.dataset_name
    return dataset, name


def select_split(dataset: datasets.DatasetDict, split: str, limit: int | None, what: str) -> datasets.Dataset:
    """`dataset[split]`, limited to its first `limit` rows, with a clear error for a missing split."""
    if split not in dataset:
        raise ValueError(f"the {what} split {split!r} is not in the dataset (it has {sorted(dataset)})")
    selected = dataset[split]
    if limit is not None:
        selected = selected.select(range(min(limit, len(selected))))
    if len(selected) == 0:
        raise ValueError(f"the {what} split {split!r} is empty")
    return selected
