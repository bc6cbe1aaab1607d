"""Pushing a trained model to the (local) Hub from the training script, loading it back by repo id, with and
without the package, and a push that fails without stopping the run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "training" / "train.py"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)  # HF_ENDPOINT / HF_TOKEN / HF_HOME of the local Hub (set by conftest)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _argv(output_dir: Path, data_root: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(TRAIN_SCRIPT),
        "--synthetic", "easy",
        "--synthetic_num_train", "8",
        "--synthetic_num_validation", "4",
        "--synthetic_image_size", "64",
        "--synthetic_dir", str(data_root),
        "--dataset_cache_dir", str(data_root / "arrow"),
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "4",
        "--num_train_epochs", "2",
        "--checkpointing_steps", "1",
        "--config_overrides", '{"lpa_implementation": "direct"}',
        "--report_to", "none",
        "--no_progress_bar",
        "--cpu",
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_push_to_hub_every_epoch_and_load_back(tmp_path, local_hub):
    import torch
    from huggingface_hub import HfApi

    from narrative_grounding import PngForPanopticNarrativeGrounding

    repo_id = f"{local_hub.namespace}/epng-tiny-{uuid.uuid4().hex[:8]}"
    output_dir = tmp_path / "run"
    done = subprocess.run(
        _argv(output_dir, tmp_path / "data", "--push_to_hub", "--hub_model_id", repo_id),
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]

    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    messages = [commit.title for commit in api.list_repo_commits(repo_id)]
    assert "Training in progress, epoch 1" in messages and "Training in progress, epoch 2" in messages
    # the end-of-training push uploads the same files as the last epoch's here (the final metrics are that
    # epoch's), which huggingface_hub skips as an empty commit; either way the newest commit holds the end state
    assert messages[0] in ("End of training", "Training in progress, epoch 2")
    files = set(api.list_repo_files(repo_id))
    assert {
        "config.json",
        "model.safetensors",
        "README.md",
        "modeling_png.py",
        "pipeline_png.py",
        "processor_config.json",
    } <= files
    assert not any(name.startswith(("checkpoints/", "logs/")) for name in files), files  # no accelerate state

    local = PngForPanopticNarrativeGrounding.from_pretrained(output_dir)
    remote = PngForPanopticNarrativeGrounding.from_pretrained(repo_id)
    for (name, expected), (_, got) in zip(
        local.state_dict().items(), remote.state_dict().items(), strict=True
    ):
        assert torch.equal(expected, got), name

    # A user without the package: the modules come from the repo (trust_remote_code).
    code = (
        "import sys; sys.modules['narrative_grounding'] = None\n"  # make importing the package fail
        "from transformers import AutoModel, AutoProcessor, pipeline\n"
        f"model = AutoModel.from_pretrained({repo_id!r}, trust_remote_code=True)\n"
        f"processor = AutoProcessor.from_pretrained({repo_id!r}, trust_remote_code=True)\n"
        "assert type(model).__module__.startswith('transformers_modules'), type(model).__module__\n"
        f"grounder = pipeline(model={repo_id!r}, trust_remote_code=True)\n"
        "assert type(grounder).__name__ == 'PanopticNarrativeGroundingPipeline', type(grounder)\n"
        "print('RESULT', type(model).__name__, type(processor).__name__, sum(p.numel() for p in model.parameters()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = [line.split("RESULT ", 1)[1] for line in done.stdout.splitlines() if "RESULT " in line]
    assert result, done.stdout
    name, processor_name, count = result[-1].split()
    assert name == "PngForPanopticNarrativeGrounding" and processor_name == "PngProcessor"
    assert int(count) == sum(p.numel() for p in local.parameters())


@pytest.mark.slow
def test_failed_push_warns_retries_and_training_finishes(tmp_path):
    with socket.socket() as sock:  # a Hub endpoint nobody answers on
        sock.bind(("127.0.0.1", 0))
        dead_endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    output_dir = tmp_path / "run"
    done = subprocess.run(
        _argv(output_dir, tmp_path / "data", "--push_to_hub", "--hub_model_id", "someone/unreachable",
              "--hub_push_retries", "2", "--hub_retry_wait", "0.01"),
        env=_env(HF_ENDPOINT=dead_endpoint), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "attempt 1/2" in done.stderr and "attempt 2/2" in done.stderr
    assert "giving up" in done.stderr and "Hub push(es) failed" in done.stderr
    # nothing local was lost: model, processor, card and the checkpoints are all there
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "README.md").is_file()
    assert (output_dir / "checkpoints" / "checkpoint-4").is_dir()
