"""The training loop behind `training/train.py` and `narrative-grounding demo`.

One function, `train(args)`, in the style of transformers' `*_no_trainer.py` examples: an `Accelerator`
does device placement, mixed precision, gradient accumulation, distributed data parallelism, trackers and
checkpoints; the loop itself stays readable top to bottom.

Exact resumption: the data order of epoch e is a function of (seed, e) only (`EpochSeededSampler`), the
checkpoint holds model, optimizer, RNG states, the lr schedule and a `TrainingProgress` (epoch, batches
done in it, optimizer steps, evaluations so far), and a resumed run skips the batches already seen in the
resumed epoch only. A checkpoint is written to a hidden staging folder and renamed when complete, so a run
killed while saving never leaves a checkpoint that "latest" would pick.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
from argparse import Namespace
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..loading import load_model_and_processor
from .collate import PngCollator
from .data import load_training_data, select_split
from .distributed import cpu_multiprocess_launch, global_loss_counts
from .evaluation import evaluate_average_recall, format_average_recall_table, scalar_metrics
from .hub import HubPusher
from .model_card import write_model_card
from .optimization import ReleasedEpochEma, build_optimizer, build_scheduler, fit_schedule, resolve_preset
from .sampler import EpochSeededSampler

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
HISTORY_FILE = "training_history.json"
RESULTS_FILE = "eval_results.json"


@dataclass
class TrainingProgress:
    """Where a run stands; saved in every checkpoint (`accelerator.register_for_checkpointing`)."""

    epoch: int = 0
    batches_in_epoch: int = 0  # batches of `epoch` already trained on (per process)
    completed_steps: int = 0  # optimizer steps
    train_seconds: float = 0.0  # wall-clock time spent in training steps (not evaluating or saving)
    fitted_steps: int = 0  # the run's length once fitted to a time budget (0: not fitted)
    # the settings that give a batch and an optimizer step their meaning (see `check_resumable`); None in
    # checkpoints written before they were recorded
    batch_layout: dict[str, int] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per evaluation

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class TrainingResult:
    output_dir: str
    metrics: dict[str, Any] | None  # the final evaluation (None with --no_eval)
    history: list[dict[str, Any]]
    completed_steps: int
    train_seconds: float
    stopped_by_time_budget: bool
    mixed_precision: str = "no"  # what the steps ran in, which may differ from what was asked
    hub_repo_id: str | None = None
    hub_commits: list[str] = field(default_factory=list)
    hub_failures: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- checkpoints
def list_checkpoints(checkpoints_dir: str | Path) -> list[Path]:
    """Complete checkpoints under `checkpoints_dir`, oldest first (ordered by optimizer step)."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX):
            suffix = path.name[len(CHECKPOINT_PREFIX) :]
            if suffix.isdigit():
                found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


def resolve_checkpoint(value: str, checkpoints_dir: Path) -> Path | None:
    """`--resume_from_checkpoint`: "latest" -> the newest complete checkpoint (None if there is none yet);
    otherwise the given folder, which must exist."""
    if value == "latest":
        checkpoints = list_checkpoints(checkpoints_dir)
        return checkpoints[-1] if checkpoints else None
    from accelerate.utils.constants import RNG_STATE_NAME

    path = Path(value)
    if not path.is_dir():
        raise ValueError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
    # accelerate's save_state writes the RNG state of process 0 into every checkpoint, whatever the model's
    # format (plain, FSDP, DeepSpeed)
    if not (path / f"{RNG_STATE_NAME}_0.pkl").is_file():
        raise ValueError(
            f"--resume_from_checkpoint {value}: not a checkpoint folder (no {RNG_STATE_NAME}_0.pkl); give one of "
            f"{CHECKPOINTS_DIR}/{CHECKPOINT_PREFIX}<step> under an --output_dir, or 'latest'"
        )
    return path


# What each entry of `TrainingProgress.batch_layout` is called in a message.
BATCH_LAYOUT_NAMES = {
    "per_device_train_batch_size": "--per_device_train_batch_size",
    "gradient_accumulation_steps": "--gradient_accumulation_steps",
    "num_processes": "the number of processes",
    "train_examples": "the number of training examples (dataset or --max_train_samples)",
    "seed": "--seed",  # with the epoch, it decides which examples each batch holds
}


def check_resumable(saved: dict[str, int] | None, current: dict[str, int], checkpoint: str | Path) -> None:
    """Raise ValueError naming every batch setting that differs from the checkpoint's: the checkpoint counts
    batches and optimizer steps, and under another batch size, accumulation, process count, training set or
    seed (the data order) those counts skip the wrong samples and stop after the wrong number of steps."""
    if saved is None:
        logger.warning(
            "checkpoint %s does not record its batch settings; assuming they are unchanged", checkpoint
        )
        return
    changed = [
        f"{BATCH_LAYOUT_NAMES.get(key, key)} was {saved[key]}, now {current[key]}"
        for key in current
        if key in saved and saved[key] != current[key]
    ]
    if changed:
        raise ValueError(
            f"cannot resume from {checkpoint}: {'; '.join(changed)}. Resume with the checkpoint's settings, or "
            "start a new run in another --output_dir (with --model set to a saved model to keep its weights)"
        )


def effective_mixed_precision(accelerator: Any) -> str:
    """The precision the training steps actually run in. accelerate accepts fp16 on a CPU but has no fp16
    autocast there, so such a run computes in fp32 ("no") while `accelerator.mixed_precision` says fp16."""
    requested = accelerator.mixed_precision
    if requested == "fp16" and accelerator.device.type == "cpu":
        return "no"
    return requested


def _report_to(value: str | None) -> Any:
    if value is None or value.strip().lower() in ("", "none"):
        return None
    if value.strip().lower() == "all":
        return "all"
    return [name.strip() for name in value.split(",") if name.strip()]


def _tracker_config(args: Namespace) -> dict[str, Any]:
    # trackers (tensorboard hparams) take only scalars and strings
    return {key: value for key, value in vars(args).items() if isinstance(value, (int, float, str, bool))}


# ---------------------------------------------------------------------------------------------- training
def train(args: Namespace) -> TrainingResult:
    """Trains, evaluates, checkpoints, saves and pushes as `args` says (see `arguments.add_training_arguments`)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file; give a folder (it is created if missing)")
    checkpoints_dir = output_dir / CHECKPOINTS_DIR
    # checked before anything is loaded: a wrong folder fails at once, not after the data is prepared
    checkpoint = (
        resolve_checkpoint(args.resume_from_checkpoint, checkpoints_dir)
        if args.resume_from_checkpoint
        else None
    )
    accelerator = Accelerator(
        cpu=args.cpu or cpu_multiprocess_launch(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=_report_to(args.report_to),
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_main_process:
        logging.getLogger("narrative_grounding").setLevel(logging.WARNING)
    set_seed(args.seed)  # the same initial weights on every process

    model, processor, base_model = load_model_and_processor(
        args.model,
        revision=args.revision,
        token=args.hub_token,
        config_overrides=args.config_overrides,
        text_model_name_or_path=args.text_model_name_or_path,
        backbone_pretrained=args.backbone_pretrained,
    )
    dataset, dataset_name = load_training_data(args, main_process_first=accelerator.main_process_first)
    train_dataset = select_split(dataset, args.train_split, args.max_train_samples, "training")
    eval_dataset = (
        None if args.no_eval else select_split(dataset, args.eval_split, args.max_eval_samples, "evaluation")
    )
    # Created once the model and the data have loaded: a run refused for its input leaves no empty folder.
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    sampler = EpochSeededSampler(len(train_dataset), seed=args.seed)
    # An explicit generator keeps DataLoader iteration from drawing on the global RNG (whose state the
    # checkpoint restores): a resumed run must not consume random numbers the uninterrupted one did not.
    train_dataloader = DataLoader(
        train_dataset,
        batch_size=args.per_device_train_batch_size,
        sampler=sampler,
        collate_fn=PngCollator(processor),
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    eval_dataloader = None
    eval_processor = processor
    if getattr(args, "eval_image_size", None):  # e.g. EPNG's release evaluates at 1216 x 1216
        eval_processor = copy.deepcopy(processor)
        eval_processor.image_processor.size = {"height": args.eval_image_size, "width": args.eval_image_size}
    if eval_dataset is not None:
        eval_dataloader = DataLoader(
            eval_dataset,
            batch_size=args.per_device_eval_batch_size,
            shuffle=False,
            collate_fn=PngCollator(eval_processor, with_references=True),
            num_workers=args.dataloader_num_workers,
            generator=torch.Generator().manual_seed(args.seed),
        )

    num_parameters = sum(p.numel() for p in model.parameters())
    preset = resolve_preset(args.optimization, num_parameters, model.config.grounding_head)
    optimizer_name = args.optimizer or preset.optimizer
    learning_rate = args.learning_rate if args.learning_rate is not None else preset.learning_rate
    weight_decay = args.weight_decay if args.weight_decay is not None else preset.weight_decay
    schedule_name = args.lr_scheduler_type or preset.lr_scheduler_type
    warmup_ratio = args.warmup_ratio if args.warmup_ratio is not None else preset.warmup_ratio
    if args.muon_learning_rate is not None and optimizer_name != "muon":
        raise ValueError(
            f"--muon_learning_rate applies to --optimizer muon only; --optimization {args.optimization} trains "
            f"{args.model} with {optimizer_name} (add --optimizer muon to use it)"
        )
    muon_learning_rate = (
        args.muon_learning_rate if args.muon_learning_rate is not None else preset.muon_learning_rate
    )
    optimizer = build_optimizer(
        model,
        optimizer=optimizer_name,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        decay_all_parameters=preset.decay_all_parameters,
        muon_learning_rate=muon_learning_rate,
    )
    optimizer_description = (
        f"muon (lr {muon_learning_rate:g}) for the hidden layers' weight matrices + adamw (lr {learning_rate:g})"
        f" for the rest, weight decay {weight_decay:g}"
        if optimizer_name == "muon"
        else f"{optimizer_name}, lr {learning_rate:g}, weight decay {weight_decay:g}"
    )

    if eval_dataloader is not None:
        model, optimizer, train_dataloader, eval_dataloader = accelerator.prepare(
            model, optimizer, train_dataloader, eval_dataloader
        )
    else:
        model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)

    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    # Stepped by hand once per optimizer step (accelerate's wrapper would step it once per process).
    lr_scheduler = build_scheduler(
        optimizer,
        name=schedule_name,
        num_training_steps=max_train_steps,
        steps_per_epoch=steps_per_epoch,
        warmup_ratio=warmup_ratio,
    )
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(lr_scheduler)
    accelerator.register_for_checkpointing(progress)
    ema = None
    if getattr(args, "ema_decay", 0.0):
        ema = ReleasedEpochEma(accelerator.unwrap_model(model), args.ema_decay)
        accelerator.register_for_checkpointing(ema)

    batch_layout = {
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "num_processes": accelerator.num_processes,
        "train_examples": len(train_dataset),
        "seed": args.seed,
    }
    if args.resume_from_checkpoint:
        if checkpoint is None:
            logger.info("no checkpoint under %s yet: starting from scratch", checkpoints_dir)
        else:
            logger.info("resuming from %s", checkpoint)
            accelerator.load_state(str(checkpoint))
            check_resumable(progress.batch_layout, batch_layout, checkpoint)
            logger.info(
                "resumed at epoch %d, batch %d, step %d",
                progress.epoch,
                progress.batches_in_epoch,
                progress.completed_steps,
            )

    progress.batch_layout = batch_layout
    mixed_precision = effective_mixed_precision(accelerator)
    if mixed_precision != accelerator.mixed_precision:
        logger.warning(
            "--mixed_precision %s is not available on %s: training runs in fp32 (use bf16 on a CPU)",
            accelerator.mixed_precision,
            accelerator.device.type,
        )

    pusher = None
    if args.push_to_hub and accelerator.is_main_process:
        pusher = HubPusher(
            args.hub_model_id,
            token=args.hub_token,
            private=args.hub_private_repo,
            retries=args.hub_push_retries,
            retry_wait=args.hub_retry_wait,
        )

    accelerator.init_trackers("narrative_grounding", config=_tracker_config(args))
    total_batch = (
        args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    )
    logger.info(
        "training %s (%.2fM parameters) on %s: %d examples, %d epochs, %d optimizer steps, batch %d "
        "(%d per device x %d processes x %d accumulation), %s, schedule %s",
        args.model, num_parameters / 1e6, dataset_name, len(train_dataset), num_epochs, max_train_steps, total_batch,
        args.per_device_train_batch_size, accelerator.num_processes, args.gradient_accumulation_steps,
        optimizer_description, schedule_name,
    )  # fmt: skip

    def evaluate(description: str) -> dict[str, Any] | None:
        if eval_dataloader is None:
            return None
        metrics = evaluate_average_recall(
            model,
            eval_dataloader,
            accelerator,
            eval_processor,
            protocol=args.eval_protocol,
            progress=not args.no_progress_bar,
            description=description,
        )
        entry = {
            "epoch": progress.epoch + progress.batches_in_epoch / len(train_dataloader),
            "step": progress.completed_steps,
            "train_seconds": round(progress.train_seconds, 3),
            **{key: value for key, value in scalar_metrics(metrics, prefix="").items()},
        }
        progress.history.append(entry)
        accelerator.log(scalar_metrics(metrics), step=progress.completed_steps)
        if accelerator.is_main_process:
            logger.info("%s\n%s", description, format_average_recall_table(metrics))
            (output_dir / HISTORY_FILE).write_text(json.dumps(progress.history, indent=2))
        return metrics

    def save_checkpoint() -> None:
        name = f"{CHECKPOINT_PREFIX}{progress.completed_steps}"
        staging, final = checkpoints_dir / f".{name}.partial", checkpoints_dir / name
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)  # atomic: "latest" only ever sees complete checkpoints
            if args.checkpoints_total_limit:
                for old in list_checkpoints(checkpoints_dir)[: -args.checkpoints_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def save_model(metrics: dict[str, Any] | None, commit_message: str | None) -> None:
        accelerator.wait_for_everyone()
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(
            str(output_dir), is_main_process=accelerator.is_main_process, save_function=accelerator.save
        )
        if accelerator.is_main_process:
            processor.save_pretrained(str(output_dir))
            write_model_card(
                output_dir,
                model_name=output_dir.name if args.hub_model_id is None else args.hub_model_id.split("/")[-1],
                dataset_name=dataset_name,
                dataset_split=args.eval_split,
                metrics=metrics,
                base_model=base_model,
                repo_id=pusher.repo_id if pusher else None,
                config_summary={
                    "variant / base": args.model,
                    "grounding head": unwrapped.config.grounding_head,
                    "parameters": f"{num_parameters / 1e6:.2f}M",
                },
                training_summary={
                    "optimizer": optimizer_description,
                    "schedule": schedule_name,
                    "batch size": total_batch,
                    "optimizer steps": progress.completed_steps,
                    "epochs": round(progress.epoch + progress.batches_in_epoch / len(train_dataloader), 3),
                    "training time (s)": round(progress.train_seconds, 1),
                    "mixed precision": mixed_precision
                    if mixed_precision == accelerator.mixed_precision
                    else f"{mixed_precision} ({accelerator.mixed_precision} was asked for; not available on "
                    f"{accelerator.device.type})",
                    "seed": args.seed,
                },
            )
            if metrics is not None:
                (output_dir / RESULTS_FILE).write_text(
                    json.dumps(scalar_metrics(metrics, prefix=""), indent=2)
                )
            if pusher is not None and commit_message is not None:
                pusher.push(output_dir, commit_message)
        accelerator.wait_for_everyone()

    planned_steps = max_train_steps  # what the epochs / --max_train_steps allow; a fit never exceeds it
    # The pace a fit extrapolates: steps and seconds at the previous fit (at the start: where the run starts).
    fit_mark = (progress.completed_steps, progress.train_seconds)
    fitting = bool(args.fit_schedule_to_time and args.max_train_time)

    def fit_to_time_budget() -> int:
        """Fits the run's length (and its cosine) to the steps that fit in what is left of the budget at the
        pace since the previous fit. Re-fitted every tenth of the run: a pace measured once, over the first
        steps, is off when those steps were slow (start-up) or the machine's load changes later, and the run
        then ends long before its budget or is cut off before the lr has annealed."""
        nonlocal fit_mark, fitting
        steps, seconds = progress.completed_steps - fit_mark[0], progress.train_seconds - fit_mark[1]
        # the same decision on every process: with several, they share one clock (`shared_clock`)
        seconds_per_step, remaining = seconds / max(steps, 1), args.max_train_time - progress.train_seconds
        fit_mark = (progress.completed_steps, progress.train_seconds)
        # 3% slack: steps get slower when evaluation or the OS interrupts
        fitted = progress.completed_steps + int(0.97 * remaining / max(seconds_per_step, 1e-9))
        fitted = max(progress.completed_steps + 1, min(planned_steps, fitted))
        if fit_schedule(lr_scheduler, fitted):
            first = not progress.fitted_steps
            progress.fitted_steps = fitted
            progress_bar.total = fitted
            (logger.info if first else logger.debug)(
                "%.3f s per step: %d steps fit in %.0f s; schedule fitted",
                seconds_per_step,
                fitted,
                args.max_train_time,
            )
            return fitted
        logger.warning(
            "--fit_schedule_to_time works with the cosine schedule only; keeping %d steps", max_train_steps
        )
        fitting = False
        return max_train_steps

    def fit_due() -> bool:
        if not fitting:
            return False
        # decided from step counts, which every process shares (each has its own clock): the first fit after
        # the calibration steps, then one every tenth of the fitted run
        if not progress.fitted_steps:
            return progress.completed_steps >= args.calibration_steps
        return progress.completed_steps >= fit_mark[0] + max(1, progress.fitted_steps // 10)

    if progress.fitted_steps:
        max_train_steps = progress.fitted_steps
        fit_schedule(lr_scheduler, max_train_steps)
    progress_bar = tqdm(
        total=max_train_steps,
        initial=progress.completed_steps,
        desc="Training",
        disable=args.no_progress_bar or not accelerator.is_local_main_process,
    )
    last_metrics = progress.history[-1] if progress.history else None
    last_eval_step = progress.history[-1]["step"] if progress.history else -1
    eval_every_seconds = getattr(args, "eval_every_seconds", None)
    next_timed_eval = (
        (math.floor(progress.train_seconds / eval_every_seconds) + 1) * eval_every_seconds
        if eval_every_seconds
        else None
    )
    stop = progress.completed_steps >= max_train_steps
    stopped_by_time = False
    shared_clock = accelerator.num_processes > 1 and (
        args.max_train_time is not None or next_timed_eval is not None
    )
    running_loss, running_batches = torch.zeros((), device=accelerator.device), 0
    model.train()
    for epoch in range(progress.epoch, num_epochs):
        if stop:
            break
        loader = train_dataloader
        if progress.batches_in_epoch:
            loader = accelerator.skip_first_batches(train_dataloader, progress.batches_in_epoch)
        # The order of this epoch depends on (seed, epoch) only. Set it through the prepared loader: its
        # __iter__ sets the sampler's epoch from its own iteration counter, which counts the epochs iterated
        # by this process (0 in a freshly resumed one), not the epoch of the run.
        loader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        step_started = time.perf_counter()
        for batch in loader:
            with accelerator.accumulate(model):
                counts = global_loss_counts(batch, accelerator) if accelerator.num_processes > 1 else None
                outputs = model(**batch, loss_counts=counts)
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and args.max_grad_norm and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            progress.batches_in_epoch += 1
            running_loss += outputs.loss.detach().float()
            running_batches += 1
            if not accelerator.sync_gradients:
                continue
            lr_scheduler.step()
            progress.completed_steps += 1
            now = time.perf_counter()
            progress.train_seconds += now - step_started
            if shared_clock:
                # Every decision taken on the clock (stop, timed evaluation) is a collective step: taken on
                # each process's own clock, one process would start evaluating (its gathers) while another
                # trains on (its gradient all-reduce), and both would wait for ever. The processes keep one
                # clock, the mean of theirs, agreed after every step.
                clock = torch.tensor(progress.train_seconds, dtype=torch.float64, device=accelerator.device)
                progress.train_seconds = accelerator.reduce(clock, reduction="mean").item()
            progress_bar.update(1)
            if progress.completed_steps % args.logging_steps == 0:
                loss = accelerator.reduce(running_loss / running_batches, reduction="mean").item()
                progress_bar.set_postfix(loss=f"{loss:.4f}")
                accelerator.log(
                    {"train/loss": loss, "train/lr": lr_scheduler.get_last_lr()[0], "train/epoch": epoch},
                    step=progress.completed_steps,
                )
                running_loss, running_batches = torch.zeros((), device=accelerator.device), 0
            if fit_due():
                max_train_steps = fit_to_time_budget()
            if args.max_train_time is not None and progress.train_seconds >= args.max_train_time:
                stop = stopped_by_time = True  # the same decision on every process: they share the clock
            if progress.completed_steps >= max_train_steps:
                stop = True
            if (
                isinstance(args.checkpointing_steps, int)
                and progress.completed_steps % args.checkpointing_steps == 0
            ):
                save_checkpoint()
            timed_eval = next_timed_eval is not None and progress.train_seconds >= next_timed_eval
            if (args.eval_steps and progress.completed_steps % args.eval_steps == 0) or timed_eval:
                if not (
                    stop and progress.batches_in_epoch >= len(train_dataloader)
                ):  # the epoch-end eval follows
                    last_metrics, last_eval_step = (
                        evaluate(f"Evaluating (step {progress.completed_steps})"),
                        progress.completed_steps,
                    )
                if timed_eval:
                    next_timed_eval = (
                        math.floor(progress.train_seconds / eval_every_seconds) + 1
                    ) * eval_every_seconds
            if stop:
                break
            step_started = time.perf_counter()  # evaluation and checkpoints are not training time
        if progress.batches_in_epoch >= len(train_dataloader):  # the epoch is complete
            progress.epoch, progress.batches_in_epoch = epoch + 1, 0
            if ema is not None:  # the release averages before its epoch-end evaluation
                ema.end_epoch(accelerator.unwrap_model(model))
            last_metrics, last_eval_step = (
                evaluate(f"Evaluating (epoch {epoch + 1})"),
                progress.completed_steps,
            )
            if args.push_to_hub:
                save_model(last_metrics, f"Training in progress, epoch {epoch + 1}")
            if args.checkpointing_steps == "epoch":
                save_checkpoint()
    progress_bar.close()

    if last_eval_step != progress.completed_steps:
        last_metrics = evaluate("Final evaluation")
    final_metrics = last_metrics
    if isinstance(final_metrics, dict) and "step" in final_metrics and "recall_curve" not in final_metrics:
        final_metrics = {
            key: value
            for key, value in final_metrics.items()
            if key not in ("epoch", "step", "train_seconds")
        }
    save_model(final_metrics, "End of training")
    accelerator.end_training()
    if accelerator.is_main_process and final_metrics is not None:
        logger.info("final evaluation\n%s", format_average_recall_table(final_metrics))
    if accelerator.num_processes == 1:
        # accelerate keeps its state in a process-wide singleton; clear it so that a later `train` call in the
        # same process may use other settings (e.g. --cpu or another mixed precision)
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    return TrainingResult(
        output_dir=str(output_dir),
        metrics=final_metrics,
        history=list(progress.history),
        completed_steps=progress.completed_steps,
        train_seconds=progress.train_seconds,
        stopped_by_time_budget=stopped_by_time,
        mixed_precision=mixed_precision,
        hub_repo_id=pusher.repo_id if pusher else None,
        hub_commits=list(pusher.pushed_commits) if pusher else [],
        hub_failures=list(pusher.failures) if pusher else [],
    )
