"""The Average Recall module travels alone: `evaluate.load` of its file and card, from a folder or a
Hub repository, in a fresh process where `narrative_grounding` cannot be imported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

from narrative_grounding.metrics import AVERAGE_RECALL_PATH, AverageRecall

# Runs in a fresh interpreter. The finder goes first on sys.meta_path, so neither PYTHONPATH=src nor
# the editable install can provide the package: the process is a machine without it.
STANDALONE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import json
    import sys


    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "narrative_grounding" or name.startswith("narrative_grounding."):
                raise ImportError(f"{name} is not installed on this machine")
            return None


    sys.meta_path.insert(0, BlockPackage())
    try:
        import narrative_grounding  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the package is still importable")

    import evaluate
    import numpy as np

    source, config_name, inputs_file = sys.argv[1:4]
    arrays = np.load(inputs_file, allow_pickle=False)
    metric = evaluate.load(source, config_name, inclusive_threshold=True)
    masks = {"predictions": list(arrays["predictions"]), "references": list(arrays["references"])}
    results = metric.compute(
        **masks, is_thing=arrays["is_thing"], num_segments=arrays["num_segments"], empty_ground_truth="miss"
    )
    loaded = sorted(name for name in sys.modules if name.startswith("narrative_grounding"))
    print(json.dumps({"type": type(metric).__name__, "loaded": loaded, "results": results}))
    """
)


@pytest.fixture(scope="module")
def phrases(tmp_path_factory) -> tuple[Path, dict]:
    """Masks with a tie at 0.5 and an empty ground truth, saved for the subprocess, and the results the
    package gives for them (protocol "stride4_padded", inclusive threshold, empty ground truth as a miss)."""
    rng = np.random.default_rng(0)
    predictions = (rng.random((6, 40, 56)) < 0.5).astype(np.float32)
    predictions[:, :4] = 0.5  # ties: foreground only with the inclusive threshold
    references = rng.random((6, 40, 56)) < 0.3
    references[5] = False  # an empty ground truth: a miss
    inputs = {
        "predictions": predictions,
        "references": references,
        "is_thing": np.array([1, 0, 1, 0, 1, 1], dtype=bool),
        "num_segments": np.array([1, 1, 2, 3, 1, 1]),
    }
    path = tmp_path_factory.mktemp("standalone") / "phrases.npz"
    np.savez(path, **inputs)
    expected = AverageRecall("stride4_padded", inclusive_threshold=True).compute(
        predictions=list(predictions),
        references=list(references),
        is_thing=inputs["is_thing"],
        num_segments=inputs["num_segments"],
        empty_ground_truth="miss",
    )
    assert expected["num_empty_ground_truth"] == 1 and expected["num_phrases"] == 6
    return path, expected


def run_without_package(source: str, inputs: Path, tmp_path: Path) -> dict:
    script = tmp_path / "standalone.py"
    script.write_text(STANDALONE_SCRIPT)
    completed = subprocess.run(
        [sys.executable, str(script), source, "stride4_padded", str(inputs)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def copy_module(destination: Path) -> Path:
    """The module as a user downloads it: its one .py file and its card, nothing else."""
    destination.mkdir()
    for name in ("average_recall.py", "README.md"):
        shutil.copy(Path(AVERAGE_RECALL_PATH) / name, destination / name)
    return destination


def test_module_file_imports_no_project_code() -> None:
    source = (Path(AVERAGE_RECALL_PATH) / "average_recall.py").read_text()
    assert "narrative_grounding" not in "".join(
        line for line in source.splitlines() if line.startswith(("import ", "from "))
    )
    assert sorted(path.name for path in Path(AVERAGE_RECALL_PATH).iterdir() if path.suffix == ".py") == [
        "__init__.py",
        "average_recall.py",
    ]


@pytest.mark.slow  # a fresh interpreter importing torch, datasets and evaluate: ~15-40 s on 2 cores
def test_evaluate_load_from_a_folder_without_the_package(phrases, tmp_path) -> None:
    inputs, expected = phrases
    folder = copy_module(tmp_path / "average_recall")
    output = run_without_package(str(folder), inputs, tmp_path)
    assert output["type"] == "AverageRecall" and output["loaded"] == []
    assert output["results"] == json.loads(json.dumps(expected))


@pytest.mark.slow  # as above, plus a round trip through the local Hub
def test_evaluate_load_from_a_hub_repository_without_the_package(phrases, tmp_path, local_hub) -> None:
    from huggingface_hub import HfApi

    inputs, expected = phrases
    # evaluate looks for `<repository name>.py` in a Space, as the Hub's own metric Spaces hold it
    name = f"average_recall_{uuid.uuid4().hex[:8]}"
    repo_id = f"{local_hub.namespace}/{name}"
    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio")
    folder = copy_module(tmp_path / name)
    (folder / "average_recall.py").rename(folder / f"{name}.py")
    api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=folder)
    output = run_without_package(repo_id, inputs, tmp_path)
    assert output["type"] == "AverageRecall" and output["loaded"] == []
    assert output["results"] == json.loads(json.dumps(expected))
