"""Training with accelerate: data loading, collation, loss normalisation across processes, evaluation,
checkpointed and resumable loop, model card and Hub pushes. `training/train.py` is the script;
`narrative-grounding demo` calls the same `train` function."""

from .arguments import add_training_arguments, build_parser, parse_args
from .collate import PngCollator, model_inputs
from .distributed import cpu_multiprocess_launch, global_loss_counts, local_loss_counts
from .evaluation import evaluate_average_recall, format_average_recall_table
from .hub import HubPusher
from .model_card import build_model_card, write_model_card
from .sampler import EpochSeededSampler
from .trainer import TrainingProgress, TrainingResult, train

__all__ = [
    "EpochSeededSampler",
    "HubPusher",
    "PngCollator",
    "TrainingProgress",
    "TrainingResult",
    "add_training_arguments",
    "build_model_card",
    "build_parser",
    "cpu_multiprocess_launch",
    "evaluate_average_recall",
    "format_average_recall_table",
    "global_loss_counts",
    "local_loss_counts",
    "model_inputs",
    "parse_args",
    "train",
    "write_model_card",
]
