"""Sharing a prepared PNG dataset: Parquet files on disk and ``push_to_hub``."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import datasets
from datasets.table import embed_table_storage

MAX_SHARD_BYTES = 500 * 1024 * 1024


def _embedded(dataset: datasets.Dataset) -> datasets.Dataset:
    # Image columns that hold paths (embed_files=False) get their bytes, so a Parquet file stands alone.
    return (
        dataset.with_format("arrow").map(embed_table_storage, batched=True, batch_size=100).with_format(None)
    )


def export_parquet(dataset: datasets.DatasetDict, output_dir: str | os.PathLike) -> dict[str, list[str]]:
    """Write each split as ``<output_dir>/data/<split>-NNNNN-of-NNNNN.parquet`` (shards of <= 500 MB).

    The file names follow the Hub's split naming, so ``datasets.load_dataset(str(output_dir))`` (or a Hub
    repo holding these files) yields the same splits, features and rows.

    Returns:
        split -> written file paths.
    """
    data_dir = Path(output_dir) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[str]] = {}
    for split, split_dataset in dataset.items():
        split_dataset = _embedded(split_dataset)
        num_shards = max(1, math.ceil(split_dataset.data.nbytes / MAX_SHARD_BYTES))
        written[split] = []
        for index in range(num_shards):
            path = data_dir / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
            split_dataset.shard(num_shards, index, contiguous=True).to_parquet(str(path))
            written[split].append(str(path))
    return written


def load_parquet_dataset(path: str | os.PathLike, **kwargs: Any) -> datasets.DatasetDict:
    """Load what :func:`export_parquet` wrote (a local folder) with ``datasets.load_dataset``."""
    return datasets.load_dataset(str(path), **kwargs)


def push_png_dataset_to_hub(
    dataset: datasets.DatasetDict,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload the Panoptic Narrative Grounding dataset",
    **kwargs: Any,
) -> Any:
    """``DatasetDict.push_to_hub`` (Parquet shards with the image bytes embedded; features in the card).

    ``datasets.load_dataset(repo_id)`` then gives back the same rows.
    """
    return dataset.push_to_hub(repo_id, token=token, private=private, commit_message=commit_message, **kwargs)
