"""Where the training data comes from: the official PNG layout, a prepared dataset, or the synthetic set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets

from ..data.synthetic.cache import ensure_synthetic_data


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
