"""Training end to end on small synthetic sets: checkpoints, evaluation, saving, model card, exact resumption
after SIGKILL, and the pieces (sampler, schedules, Hub pusher, model card) on their own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "training" / "train.py"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A folder where the small easy synthetic sets of these tests are generated once per session."""
    return tmp_path_factory.mktemp("synthetic")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"  # identical threading in every run: bitwise-comparable results
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _train_argv(output_dir: Path, synthetic_root: Path, *extra: str) -> list[str]:
    return [
        "--synthetic", "easy",
        "--synthetic_num_train", "24",
        "--synthetic_num_validation", "8",
        "--synthetic_image_size", "64",
        "--synthetic_dir", str(synthetic_root),
        "--dataset_cache_dir", str(synthetic_root / "arrow"),
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4",
        "--num_train_epochs", "2",
        "--config_overrides", '{"lpa_implementation": "direct"}',
        "--no_progress_bar",
        "--cpu",
        *extra,
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------- unit pieces
def test_sampler_order_depends_only_on_seed_and_epoch():
    from narrative_grounding.training import EpochSeededSampler

    first, second = EpochSeededSampler(50, seed=3), EpochSeededSampler(50, seed=3)
    for _ in range(3):  # iterating epochs in one sampler does not change a later epoch's order
        first.set_epoch(0)
        list(first)
    first.set_epoch(2)
    second.set_epoch(2)
    assert list(first) == list(second)
    assert sorted(first) == list(range(50))
    second.set_epoch(3)
    assert list(second) != list(first)
    assert list(EpochSeededSampler(5, seed=1, shuffle=False)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="at least one sample"):
        EpochSeededSampler(0, seed=1)


def test_paper_schedule_and_fitted_cosine():
    import torch

    from narrative_grounding.training.optimization import build_scheduler, fit_schedule

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1e-5)
    scheduler = build_scheduler(optimizer, name="paper-step", num_training_steps=150, steps_per_epoch=10)
    rates = []
    for _ in range(130):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # EPNG: 1e-5, halved after 5 epochs, 5e-7 from epoch 10 on
    assert rates[0] == pytest.approx(1e-5) and rates[49] == pytest.approx(1e-5)
    assert rates[50] == pytest.approx(5e-6) and rates[99] == pytest.approx(5e-6)
    assert rates[100] == pytest.approx(5e-7) and rates[129] == pytest.approx(5e-7)

    optimizer = torch.optim.AdamW([parameter], lr=1.0)
    cosine = build_scheduler(
        optimizer, name="cosine", num_training_steps=1000, steps_per_epoch=10, warmup_ratio=0.01
    )
    assert fit_schedule(cosine, 100)
    for _ in range(100):
        optimizer.step()
        cosine.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)  # annealed at the fitted end
    assert not fit_schedule(scheduler, 10)  # the step schedule has no length to fit


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_optimizer_is_fused_on_cpu_and_steps_like_the_per_parameter_loop(name):
    import copy

    import torch

    from narrative_grounding.training.optimization import build_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))
    model[2].requires_grad_(False)  # frozen parameters are left out
    twin = copy.deepcopy(model)
    optimizer = build_optimizer(model, optimizer=name, learning_rate=1e-2, weight_decay=0.1)
    assert optimizer.defaults["fused"] is True
    assert [len(group["params"]) for group in optimizer.param_groups] == [
        1,
        3,
    ]  # decay: the Linear weight only
    loop_class = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    loop = loop_class(
        [
            {"params": [twin[0].weight], "weight_decay": 0.1},
            {"params": [twin[0].bias, twin[1].weight, twin[1].bias], "weight_decay": 0.0},
        ],
        lr=1e-2,
        foreach=False,
    )
    inputs = torch.randn(8, 6)
    initial = model[0].weight.detach().clone()
    for _ in range(5):
        for network, step in ((model, optimizer), (twin, loop)):
            network(inputs).square().mean().backward()
            step.step()
            step.zero_grad()
    for fused_parameter, loop_parameter in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(fused_parameter, loop_parameter, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(model[0].weight, initial, atol=1e-3)  # the steps did move the weights


def test_model_card_has_model_index_and_loading_code(tmp_path):
    from huggingface_hub import ModelCard

    from narrative_grounding.training import write_model_card

    metrics = {
        "average_recall": 0.8125,
        "average_recall_things": 0.75,
        "average_recall_stuff": 0.875,
        "average_recall_singular": 0.8,
        "average_recall_plural": float("nan"),  # a split without phrases
        "num_phrases": 12,
    }
    path = write_model_card(
        tmp_path, model_name="epng-tiny-demo", dataset_name="png-synthetic-hard", metrics=metrics
    )
    card = ModelCard.load(path)
    results = card.data.eval_results
    assert {r.metric_type: r.metric_value for r in results} == {
        "average_recall": 0.8125,
        "average_recall_things": 0.75,
        "average_recall_stuff": 0.875,
        "average_recall_singular": 0.8,
    }
    assert all(
        r.dataset_name == "png-synthetic-hard" and r.task_type == "panoptic-narrative-grounding"
        for r in results
    )
    assert "| Average Recall | 81.2 |" in card.text and "| AR plural | - |" in card.text
    assert "PngForPanopticNarrativeGrounding.from_pretrained" in card.text
    # the transformers-only way comes first
    assert card.text.index('pipeline("panoptic-narrative-grounding"') < card.text.index(
        "from narrative_grounding import"
    )


def test_hub_pusher_failure_warns_and_retries_without_raising(tmp_path, caplog):
    import socket

    from huggingface_hub import HfApi

    from narrative_grounding.training import HubPusher

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "config.json").write_text("{}")
    api = HfApi(endpoint=f"http://127.0.0.1:{port}", token="hf_x")
    pusher = HubPusher("someone/model", api=api, retries=3, retry_wait=0.01)
    with caplog.at_level("WARNING"):
        assert pusher.push(tmp_path, "epoch 1") is None
    attempts = [record for record in caplog.records if "failed (attempt" in record.getMessage()]
    assert len(attempts) == 3
    assert pusher.failures == ["create_repo"]
    assert (tmp_path / "config.json").is_file()  # the local copy is untouched


def test_resume_refuses_changed_batch_settings_naming_them(tmp_path):
    from narrative_grounding.training.trainer import check_resumable

    saved = {
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "num_processes": 1,
        "train_examples": 24,
    }
    check_resumable(saved, dict(saved), tmp_path)  # unchanged: resumes
    check_resumable(None, dict(saved), tmp_path)  # a checkpoint from before the settings were recorded
    changed = {**saved, "gradient_accumulation_steps": 2, "num_processes": 2}
    with pytest.raises(
        ValueError, match="--gradient_accumulation_steps was 1, now 2; the number of processes was 1"
    ):
        check_resumable(saved, changed, tmp_path)
    with pytest.raises(ValueError, match="--seed was 7, now 8"):  # another data order
        check_resumable({**saved, "seed": 7}, {**saved, "seed": 8}, tmp_path)


def test_fp16_on_cpu_is_recorded_as_fp32_and_resume_with_another_batch_size_is_refused(
    tmp_path, synthetic_root
):
    """A CPU run asked for fp16 trains in fp32 (accelerate has no fp16 autocast on CPU): the result and the model
    card say so. Resuming its checkpoint with another per-device batch size trained the wrong number of steps."""
    from accelerate.state import AcceleratorState
    from huggingface_hub import ModelCard

    from narrative_grounding.training import parse_args, train

    # accelerate's state is process-wide and fixes the precision once set: start from none, whatever ran before
    AcceleratorState._reset_state(reset_partial_state=True)
    output_dir = tmp_path / "run"
    short = ("--max_train_steps", "1", "--checkpointing_steps", "1", "--no_eval", "--report_to", "none")
    result = train(parse_args(_train_argv(output_dir, synthetic_root, *short, "--mixed_precision", "fp16")))
    assert result.completed_steps == 1 and result.mixed_precision == "no"
    card = ModelCard.load(output_dir / "README.md").text
    assert "mixed precision: `no (fp16 was asked for; not available on cpu)`" in card
    # the tiny model's default ("fast") recipe: both of its optimizers' rates
    assert "muon (lr 0.01) for the hidden layers' weight matrices + adamw (lr 0.003) for the rest" in card

    # a Muon rate where the preset picks another optimizer is refused, naming both
    paper = ("--optimization", "paper", "--muon_learning_rate", "0.02")
    with pytest.raises(ValueError, match="--optimization paper trains epng-tiny with adam"):
        train(parse_args(_train_argv(tmp_path / "paper", synthetic_root, *short, *paper)))
    AcceleratorState._reset_state(reset_partial_state=True)

    resumed = ("--resume_from_checkpoint", "latest", "--per_device_train_batch_size", "2")
    with pytest.raises(ValueError, match="checkpoint-1: --per_device_train_batch_size was 4, now 2"):
        train(parse_args(_train_argv(output_dir, synthetic_root, *short, *resumed)))
    AcceleratorState._reset_state(reset_partial_state=True)  # train() resets it only when it returns


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_short_training_run_end_to_end(tmp_path, synthetic_root):
    import torch
    from huggingface_hub import ModelCard

    from narrative_grounding import PngForPanopticNarrativeGrounding
    from narrative_grounding.modeling.processing_png import PngProcessor
    from narrative_grounding.training import parse_args, train

    output_dir = tmp_path / "run"
    args = parse_args(
        _train_argv(
            output_dir, synthetic_root, "--checkpointing_steps", "epoch", "--report_to", "tensorboard"
        )
    )
    result = train(args)

    assert result.completed_steps == 12  # 24 images / batch 4 x 2 epochs
    assert [entry["step"] for entry in result.history] == [6, 12]  # one evaluation per epoch
    metrics = result.metrics
    assert metrics["num_phrases"] > 0 and 0.0 <= metrics["average_recall"] <= 1.0
    assert metrics["num_things"] + metrics["num_stuff"] == metrics["num_phrases"]
    # the synthetic annotations record each phrase's expression kind: AR per kind, every phrase in one kind
    kinds = {k: v for k, v in metrics.items() if k.startswith("num_phrases_expression_")}
    assert set(kinds) == {f"num_phrases_expression_{k}" for k in ("attribute", "group", "stuff")}
    assert sum(kinds.values()) == metrics["num_phrases"]
    assert metrics["num_phrases_expression_stuff"] == metrics["num_stuff"]
    assert 0.0 <= metrics["average_recall_expression_group"] <= 1.0
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["checkpoint-12", "checkpoint-6"]
    assert list((output_dir / "logs").rglob("events.out.tfevents.*")), "tensorboard wrote nothing"

    saved = json.loads((output_dir / "eval_results.json").read_text())
    assert saved["average_recall"] == pytest.approx(metrics["average_recall"])
    card = ModelCard.load(output_dir / "README.md")
    card_ar = {r.metric_type: r.metric_value for r in card.data.eval_results}["average_recall"]
    assert card_ar == pytest.approx(metrics["average_recall"], abs=1e-6)

    model = PngForPanopticNarrativeGrounding.from_pretrained(output_dir)
    processor = PngProcessor.from_pretrained(output_dir)
    from narrative_grounding.training.data import load_training_data

    dataset, _ = load_training_data(args)
    row = dataset["validation"][0]
    spans = [(p["start"], p["end"]) for p in row["phrases"]]
    inputs = processor(images=row["image"], text=row["caption"], phrases=spans, return_tensors="pt")
    with torch.no_grad():
        masks = processor.post_process_panoptic_narrative_grounding(model(**inputs), inputs=inputs)[0][
            "masks"
        ]
    assert masks.shape == (len(spans), row["height"], row["width"])


def _history(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "training_history.json").read_text())


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path, synthetic_root):
    from safetensors.torch import load_file

    extra = ("--checkpointing_steps", "2", "--report_to", "none", "--seed", "7")
    reference_dir, resumed_dir = tmp_path / "uninterrupted", tmp_path / "interrupted"
    # The uninterrupted run goes on beside the one that is killed (each is one single-threaded process).
    # Its stderr goes to a file (a full pipe would stall it); the child keeps its own copy of the handle.
    with (tmp_path / "uninterrupted.log").open("w") as reference_log:
        reference = subprocess.Popen(
            [sys.executable, str(TRAIN_SCRIPT), *_train_argv(reference_dir, synthetic_root, *extra)],
            env=_env(), stdout=subprocess.DEVNULL, stderr=reference_log,
        )  # fmt: skip

    # Kill the second run (SIGKILL: no clean-up) once it has written its checkpoint at step 4, i.e. in the
    # middle of the first epoch (6 steps), so that the resumed run must skip batches inside that epoch.
    argv = [sys.executable, str(TRAIN_SCRIPT), *_train_argv(resumed_dir, synthetic_root, *extra)]
    process = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (resumed_dir / "checkpoints" / "checkpoint-4").is_dir():
        assert process.poll() is None, process.stderr.read()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint within the time limit"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (resumed_dir / "eval_results.json").exists(), "the run finished before it was killed"
    killed_at = max(int(p.name.split("-")[1]) for p in (resumed_dir / "checkpoints").glob("checkpoint-*"))
    assert killed_at < 12
    reference.wait(timeout=300)
    assert reference.returncode == 0, (tmp_path / "uninterrupted.log").read_text()[-4000:]

    done = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *_train_argv(resumed_dir, synthetic_root, *extra),
         "--resume_from_checkpoint", "latest"],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "resuming from" in done.stderr

    expected, got = (
        load_file(reference_dir / "model.safetensors"),
        load_file(resumed_dir / "model.safetensors"),
    )
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert (got[name] == tensor).all(), f"{name} differs after resuming"

    def comparable(history):  # training time differs between runs; everything else must not
        return [{k: v for k, v in entry.items() if k != "train_seconds"} for entry in history]

    assert comparable(_history(resumed_dir)) == comparable(_history(reference_dir))
    assert json.loads((resumed_dir / "eval_results.json").read_text()) == json.loads(
        (reference_dir / "eval_results.json").read_text()
    )


def test_average_recall_table_and_model_card_show_every_metric_key():
    from narrative_grounding.metrics import (
        AVERAGE_RECALL_COUNT_KEYS,
        AVERAGE_RECALL_KEYS,
        average_recall_from_ious,
    )
    from narrative_grounding.training import build_model_card, format_average_recall_table

    # IoUs 1, 0.5, 0.25, 0: things 75%, stuff 12.5%, singular 62.5%, plural 25%, two phrases each
    results = average_recall_from_ious(
        [1.0, 0.5, 0.25, 0.0], is_thing=[True, True, False, False], num_segments=[1, 3, 1, 2]
    )
    assert set(AVERAGE_RECALL_KEYS) | set(AVERAGE_RECALL_COUNT_KEYS) <= results.keys()
    rows = [line.split() for line in format_average_recall_table(results).splitlines()[1:]]
    assert rows == [
        ["overall", f"{100 * results['average_recall']:.1f}", "4"],
        ["things", "75.0", "2"],
        ["stuff", "12.5", "2"],
        ["singular", "62.5", "2"],
        ["plural", "25.0", "2"],
    ]
    card = str(build_model_card(model_name="m", dataset_name="d", metrics=results))
    for row in (
        "| AR things | 75.0 |",
        "| AR stuff | 12.5 |",
        "| AR singular | 62.5 |",
        "| AR plural | 25.0 |",
    ):
        assert row in card


def test_average_recall_per_expression_kind_from_the_gathered_table():
    import numpy as np

    from narrative_grounding.metrics import average_recall_from_ious
    from narrative_grounding.training.evaluation import (
        PAD,
        average_recall_from_table,
        format_average_recall_table,
    )

    # intersections / unions / reference areas / is_thing / segments / kind (0 attribute, 2 position, 6 stuff)
    rows = np.array(
        [
            [10, 10, 10, 1, 1, 0],  # IoU 1
            [5, 10, 10, 1, 1, 0],  # IoU 0.5
            [0, 10, 10, 1, 2, 2],  # IoU 0
            [8, 10, 10, 0, 1, 6],  # IoU 0.8
            [PAD] * 6,  # batch padding
        ]
    )
    results = average_recall_from_table(rows[None])
    expected = average_recall_from_ious([1.0, 0.5, 0.0, 0.8], [True, True, True, False], [1, 1, 2, 1])
    assert results["average_recall"] == pytest.approx(expected["average_recall"])
    assert results["average_recall_expression_attribute"] == pytest.approx(
        average_recall_from_ious([1.0, 0.5], [True, True], [1, 1])["average_recall"]
    )
    assert results["average_recall_expression_position"] == pytest.approx(
        average_recall_from_ious([0.0], [True], [2])["average_recall"]
    )
    assert (results["num_phrases_expression_attribute"], results["num_phrases_expression_stuff"]) == (2, 1)
    assert "average_recall_expression_relation" not in results  # no phrase of that kind
    lines = format_average_recall_table(results).splitlines()
    assert lines[6].split() == ["expression", "AR", "(%)", "phrases"]
    assert [line.split()[0] for line in lines[7:]] == ["attribute", "position", "stuff"]

    unrecorded = rows.copy()
    unrecorded[:4, 5] = -1  # the official files record no kind: no per-kind entries
    assert not any("expression" in key for key in average_recall_from_table(unrecorded))


def test_collator_reads_expression_kinds_and_names_an_unknown_one(synthetic_root):
    import io

    from PIL import Image

    from narrative_grounding import load_processor
    from narrative_grounding.data.synthetic import EXPRESSION_KINDS
    from narrative_grounding.training import PngCollator

    png = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 0, 0)).save(png, format="PNG")  # segment id 1 everywhere
    phrase = {"text": "the circle on the left", "start": 0, "end": 22, "segment_ids": [1], "is_thing": True}
    phrase |= {"num_segments": 1, "expression": "position"}
    row = {
        "image_id": 7,
        "image": Image.new("RGB", (8, 8)),
        "caption": "the circle on the left and the sky.",
        "panoptic_png": {"bytes": png.getvalue(), "path": None},
        "phrases": [phrase, {**phrase, "text": "the sky", "start": 27, "end": 34, "expression": None}],
    }
    collator = PngCollator(load_processor("epng-tiny"), with_references=True)
    kinds = collator([row])["expression_kinds"][0].tolist()
    assert kinds == [EXPRESSION_KINDS.index("position"), -1]
    row["phrases"] = [{**phrase, "expression": "colour"}]
    with pytest.raises(
        ValueError, match="image 7: phrase 'the circle on the left' has the unknown expression kind 'colour'"
    ):
        collator([row])


def test_schedule_fitted_to_time_uses_the_whole_budget_after_a_slow_start(tmp_path, synthetic_root):
    """The first steps wait for the data-loading worker to start, so a pace measured over them alone
    predicts far fewer steps than fit in the budget; re-fitting to the pace of the latest steps keeps the
    run going until the budget is spent."""
    from narrative_grounding.training import parse_args, train

    budget = 12.0
    argv = _train_argv(
        tmp_path / "run",
        synthetic_root,
        "--num_train_epochs", "1000",
        "--max_train_time", str(budget),
        "--fit_schedule_to_time",
        "--calibration_steps", "2",
        "--dataloader_num_workers", "1",
        "--lr_scheduler_type", "cosine",
        "--no_eval",
    )  # fmt: skip
    result = train(parse_args(argv))
    assert result.train_seconds >= 0.85 * budget, (result.train_seconds, result.completed_steps)
