"""Data parallelism on CPU with two real gloo processes.

The module doubles as the worker script: `torchrun --nproc_per_node 2 tests/test_distributed.py <mode> ...`
(or plain `python tests/test_distributed.py ...` for one process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES, PHRASES, TOKENS, SIZE = 4, 3, 12, 64  # 2B = 4 samples; B = 2 per process
#: DistributedDataParallel's warning about gradients whose strides differ from their parameters'.
GRAD_STRIDE_WARNING = "Grad strides do not match bucket view strides"


def _global_batch():
    """A fixed batch of 2B samples with different numbers of phrases and mask sizes per sample."""
    import torch

    generator = torch.Generator().manual_seed(1234)
    pixel_values = torch.randn(SAMPLES, 3, SIZE, SIZE, generator=generator)
    input_ids = torch.randint(5, 100, (SAMPLES, TOKENS), generator=generator)
    attention_mask = torch.ones(SAMPLES, TOKENS, dtype=torch.long)
    phrase_token_mask = torch.zeros(SAMPLES, PHRASES, TOKENS)
    phrase_mask = torch.zeros(SAMPLES, PHRASES, dtype=torch.bool)
    labels = torch.zeros(SAMPLES, PHRASES, SIZE, SIZE)
    for sample in range(SAMPLES):
        for phrase in range(1 + sample % PHRASES):  # 1, 2, 3, 1 real phrases: unequal counts per process
            phrase_token_mask[sample, phrase, 1 + 3 * phrase : 3 + 3 * phrase] = 1
            phrase_mask[sample, phrase] = True
            top, left = torch.randint(0, SIZE // 2, (2,), generator=generator).tolist()
            extent = 8 + 6 * ((sample + phrase) % 4)  # masks of different areas
            labels[sample, phrase, top : top + extent, left : left + extent] = 1
    return {
        "pixel_values": pixel_values,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "phrase_token_mask": phrase_token_mask,
        "phrase_mask": phrase_mask,
        "labels": labels,
    }


def _gradient_worker(out_file: str) -> None:
    """One forward/backward of the tiny model on this process's share of the global batch; the main process
    writes the (process-averaged) loss, loss terms and the DDP-averaged gradients."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from narrative_grounding import create_model
    from narrative_grounding.training import cpu_multiprocess_launch, global_loss_counts

    accelerator = Accelerator(cpu=cpu_multiprocess_launch())
    set_seed(0)
    # Frozen batch norm: batch statistics would differ between a batch of 2B and two of B by design
    # (SyncBatchNorm does not run on CPU); no dropout: the two runs would draw different dropout masks.
    # The claim under test is the loss normalisation.
    model = create_model(
        "epng-tiny",
        backbone_config={"freeze_batch_norm_2d": True},
        text_config={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    )
    model = accelerator.prepare(model)
    batch = _global_batch()
    share = SAMPLES // accelerator.num_processes
    start = accelerator.process_index * share
    local = {key: value[start : start + share] for key, value in batch.items()}
    counts = global_loss_counts(local, accelerator)
    outputs = model(**local, loss_counts=counts)
    accelerator.backward(outputs.loss)
    loss = accelerator.reduce(outputs.loss.detach(), reduction="mean")
    terms = {
        name: accelerator.reduce(value.detach(), reduction="mean").item()
        for name, value in outputs.loss_dict.items()
    }
    gradients = {
        name: parameter.grad.detach().clone()
        for name, parameter in accelerator.unwrap_model(model).named_parameters()
        if parameter.grad is not None
    }
    if accelerator.is_main_process:
        torch.save(
            {
                "loss": loss.item(),
                "terms": terms,
                "gradients": gradients,
                "processes": accelerator.num_processes,
            },
            out_file,
        )
    accelerator.wait_for_everyone()
    # Tears the gloo process group down before the interpreter exits: a process that exits with it alive
    # can abort in gloo's thread destructors ("terminate called without an active exception").
    accelerator.end_training()


def _slow_clock_worker(*train_argv: str) -> None:
    """`training/train.py` with `train_argv`, except that the second process's clock runs at half speed (as on a
    machine where one process is slowed down): the processes must still take every decision made on the clock
    (stop, timed evaluation) together."""
    import time
    import types

    from narrative_grounding.training import parse_args, train
    from narrative_grounding.training import trainer as trainer_module

    if int(os.environ["RANK"]) == 1:
        start = time.perf_counter()
        trainer_module.time = types.SimpleNamespace(
            **{name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
        )
        trainer_module.time.perf_counter = lambda: start + 0.5 * (time.perf_counter() - start)
    train(parse_args(list(train_argv)))


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"  # two processes on two cores
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def torchrun_command(nproc: int, *script_args: str) -> list[str]:
    """`torchrun --nproc_per_node N` on a free port (a CPU machine gets the gloo backend)."""
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port=0",
        "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0", *script_args,
    ]  # fmt: skip


@pytest.mark.slow
def test_one_process_batch_2b_equals_two_processes_batch_b(tmp_path):
    import torch

    single, double = tmp_path / "single.pt", tmp_path / "double.pt"
    env = _worker_env()
    done = subprocess.run(
        [sys.executable, __file__, "gradients", str(single)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    done = subprocess.run(
        torchrun_command(2, __file__, "gradients", str(double)),
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    # every weight gradient has its parameter's strides (see VisualEncoder.match_weight_layout)
    assert GRAD_STRIDE_WARNING not in done.stderr
    one, two = torch.load(single), torch.load(double)
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    for name in one["terms"]:
        assert two["terms"][name] == pytest.approx(one["terms"][name], rel=1e-5, abs=1e-7), name
    assert one["gradients"].keys() == two["gradients"].keys()
    assert len(one["gradients"]) > 10
    for name, gradient in one["gradients"].items():
        # float32 sums in another order: differences of ~1e-7 of the largest entry (a wrong normalisation
        # would be a factor of 2)
        atol = 1e-6 * float(gradient.abs().max()) + 1e-9
        torch.testing.assert_close(two["gradients"][name], gradient, rtol=1e-4, atol=atol, msg=name)


@pytest.mark.slow
def test_two_processes_train_and_evaluate_with_gathered_metrics(tmp_path):
    """torchrun x 2 (gloo) trains a few steps and evaluates on a validation split that does not divide evenly
    over the processes: the gathered metric must count every phrase exactly once and agree with a
    one-process evaluation of the saved model."""
    from narrative_grounding.data.synthetic import synthetic_data_dir

    data_root, output_dir = tmp_path / "data", tmp_path / "run"
    train_argv = [
        str(ROOT / "training" / "train.py"),
        "--synthetic", "easy",
        "--synthetic_num_train", "12",
        "--synthetic_num_validation", "10",  # 10 = 4 + 4 + 2: accelerate pads the last batch with repeats
        "--synthetic_image_size", "64",
        "--synthetic_dir", str(data_root),
        "--dataset_cache_dir", str(data_root / "arrow"),
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "2",
        "--per_device_eval_batch_size", "2",
        "--max_train_steps", "4",
        "--config_overrides", '{"lpa_implementation": "direct"}',
        "--report_to", "none",
        "--no_progress_bar",
    ]  # fmt: skip
    done = subprocess.run(
        torchrun_command(2, *train_argv), env=_worker_env(), capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "x 2 processes" in done.stderr  # the processes trained together (gloo), not side by side
    assert GRAD_STRIDE_WARNING not in done.stderr
    distributed = json.loads((output_dir / "eval_results.json").read_text())

    layout = synthetic_data_dir("easy", 12, 10, 64, 0, data_root)
    narratives = json.loads((layout / "annotations" / "png_coco_val2017.json").read_text())
    grounded = sum(
        1
        for narrative in narratives
        for segment in narrative["segments"]
        if segment["noun"] and segment["segment_ids"]
    )
    assert distributed["num_phrases"] == grounded  # every phrase once: the repeats were dropped

    single = tmp_path / "single.json"
    done = subprocess.run(
        [sys.executable, "-m", "narrative_grounding.cli", "evaluate", str(output_dir), "--data-dir", str(layout),
         "--batch-size", "3", "--json", str(single)],
        env=_worker_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "overall" in done.stdout
    one_process = json.loads(single.read_text())
    for key in (
        "average_recall",
        "average_recall_things",
        "average_recall_stuff",
        "num_phrases",
        "num_things",
    ):
        assert one_process[key] == pytest.approx(distributed[key], abs=1e-9), key


@pytest.mark.slow
def test_processes_whose_clocks_differ_evaluate_and_stop_together(tmp_path):
    """Timed evaluations are collective: decided on each process's own clock, one process would gather
    metrics while the other all-reduces gradients, and both would wait for ever (the timeout below)."""
    output_dir = tmp_path / "run"
    train_argv = [
        "--synthetic", "easy",
        "--synthetic_num_train", "16",
        "--synthetic_num_validation", "4",
        "--synthetic_image_size", "64",
        "--synthetic_dir", str(tmp_path / "data"),
        "--dataset_cache_dir", str(tmp_path / "data" / "arrow"),
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "2",
        "--per_device_eval_batch_size", "2",
        "--max_train_steps", "16",
        "--max_train_time", "600",
        "--eval_every_seconds", "0.3",
        "--report_to", "none",
        "--no_progress_bar",
    ]  # fmt: skip
    done = subprocess.run(
        torchrun_command(2, __file__, "slow_clock", *train_argv),
        env=_worker_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    history = json.loads((output_dir / "training_history.json").read_text())
    timed = [entry["step"] for entry in history if entry["step"] < 16]
    assert len(timed) >= 2, history  # several evaluations on the way, each taken by both processes


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "gradients":
        _gradient_worker(*rest)
    elif mode == "slow_clock":
        _slow_clock_worker(*rest)
    else:
        raise SystemExit(f"unknown worker mode {mode!r}")
