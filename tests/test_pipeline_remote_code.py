"""A saved or pushed checkpoint runs with transformers alone: model, processor and the pipeline that travels
with it (custom_pipelines + pipeline_png.py), in a process where importing narrative_grounding fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from huggingface_hub import HfApi
from transformers import AutoTokenizer, pipeline

import narrative_grounding.pipeline  # noqa: F401  (registers the task in this process)
from narrative_grounding import PngConfig, available_variants, create_model, load_config
from narrative_grounding.factory import variant_path
from narrative_grounding.modeling.configuration_png import CUSTOM_PIPELINE, PIPELINE_TASK
from narrative_grounding.modeling.image_processing_png import PngImageProcessor
from narrative_grounding.modeling.processing_png import PngProcessor

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = variant_path("epng-tiny")  # the tiny tokenizer ships in the tiny variants' folders
NARRATIVE = "In this picture we can see a black bear on this tree, and the sky above them."
PHRASES = ["a black bear", "this tree", "the sky"]
# The files a repository needs for pipeline(..., trust_remote_code=True): the pipeline and what it imports.
PIPELINE_FILES = {"pipeline_png.py", "processing_png.py", "image_processing_png.py", "configuration_png.py"}


def picture(height: int = 48, width: int = 80, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def make_processor() -> PngProcessor:
    return PngProcessor(
        PngImageProcessor(size={"height": 64, "width": 64}), AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, object, PngProcessor]:
    """A tiny EPNG after a few optimizer steps on one real encoded sample, saved with its processor."""
    folder = tmp_path_factory.mktemp("trained")
    torch.manual_seed(0)
    model = create_model("epng-tiny", lpa_implementation="direct")
    processor = make_processor()
    image = picture(64, 64, seed=3)
    masks = np.zeros((len(PHRASES), 64, 64), dtype=bool)
    masks[0, 8:40, 8:40], masks[1, 30:64, 20:60], masks[2, :10, :] = True, True, True
    batch = processor(images=image, text=NARRATIVE, phrases=PHRASES, phrase_masks=[masks])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


def expected_masks(model, processor: PngProcessor, image: PIL.Image.Image) -> torch.Tensor:
    """The package's own path: processor -> model -> post-processing."""
    inputs = processor(images=image, text=NARRATIVE, phrases=PHRASES)
    with torch.no_grad():
        outputs = model(**inputs)
    return processor.post_process_panoptic_narrative_grounding(outputs, inputs=inputs)[0]["masks"]


def test_saved_folder_names_and_carries_its_pipeline(trained) -> None:
    folder, _, _ = trained
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"] == {PIPELINE_TASK: CUSTOM_PIPELINE}
    assert config["auto_map"]["AutoModel"] == "modeling_png.PngForPanopticNarrativeGrounding"
    assert PIPELINE_FILES <= {path.name for path in folder.iterdir()}
    # In this process the installed package serves the task: the loaded config leaves the entry to the
    # registration (pipeline() would otherwise insist on trust_remote_code), and saving it writes it again.
    loaded = PngConfig.from_pretrained(folder)
    assert not hasattr(loaded, "custom_pipelines")
    grounder = pipeline(PIPELINE_TASK, model=str(folder))
    assert type(grounder).__module__ == "narrative_grounding.modeling.pipeline_png"


def test_config_alone_carries_the_pipeline(tmp_path) -> None:
    """What a hub_configs variant publishes (a config with its processor, no weights) carries it too."""
    config = load_config("epng-tiny")
    config.custom_pipelines = {"other-task": {"impl": "other.Pipeline", "pt": ["AutoModel"]}}
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())["custom_pipelines"]
    assert written == {
        "other-task": {"impl": "other.Pipeline", "pt": ["AutoModel"]},
        PIPELINE_TASK: CUSTOM_PIPELINE,
    }
    assert config.custom_pipelines == {
        "other-task": {"impl": "other.Pipeline", "pt": ["AutoModel"]}
    }  # unchanged
    assert PIPELINE_FILES <= {path.name for path in tmp_path.iterdir()}
    assert "from .configuration_png import" in (tmp_path / "pipeline_png.py").read_text()
    for name in available_variants():  # every named variant, as published
        load_config(name).save_pretrained(tmp_path / name)
        config_json = json.loads((tmp_path / name / "config.json").read_text())
        assert config_json["custom_pipelines"] == {PIPELINE_TASK: CUSTOM_PIPELINE}, name
        assert PIPELINE_FILES <= {path.name for path in (tmp_path / name).iterdir()}, name


def test_pipeline_save_pretrained_and_push_write_model_pipeline_and_processor(
    trained, tmp_path, local_hub
) -> None:
    folder, model, processor = trained
    grounder = pipeline(PIPELINE_TASK, model=model, processor=processor)
    grounder.save_pretrained(tmp_path)
    names = {path.name for path in tmp_path.iterdir()}
    assert PIPELINE_FILES | {"model.safetensors", "processor_config.json", "tokenizer.json"} <= names
    repo_id = f"{local_hub.namespace}/epng-tiny-pipe-{uuid.uuid4().hex[:8]}"
    grounder.push_to_hub(repo_id)
    assert names - {"README.md"} <= set(HfApi().list_repo_files(repo_id))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["custom_pipelines"][PIPELINE_TASK] == CUSTOM_PIPELINE
    image = picture()
    again = pipeline(PIPELINE_TASK, model=str(tmp_path))(image, NARRATIVE, PHRASES)
    assert torch.equal(again["masks"], expected_masks(model, processor, image))


def test_narrative_and_text_are_both_accepted(trained) -> None:
    _, model, processor = trained
    image = picture()
    expected = expected_masks(model, processor, image)
    grounder = pipeline(PIPELINE_TASK, model=model, processor=processor)
    for result in (
        grounder(image, text=NARRATIVE, phrases=PHRASES),
        grounder(images=image, narrative=NARRATIVE, phrases=PHRASES),
        grounder({"image": image, "text": NARRATIVE, "phrases": PHRASES}),
        grounder([{"images": image, "narrative": NARRATIVE, "phrases": PHRASES}])[0],
    ):
        assert torch.equal(result["masks"], expected)
    by_alias = processor(images=image, narrative=NARRATIVE, phrases=PHRASES)
    by_name = processor(images=image, text=NARRATIVE, phrases=PHRASES)
    assert torch.equal(by_alias["input_ids"], by_name["input_ids"])
    assert by_alias.metadata[0]["spans"] == by_name.metadata[0]["spans"]

    with pytest.raises(TypeError, match="as narrative= or as its alias text=, not both"):
        grounder(image, NARRATIVE, PHRASES, text=NARRATIVE)
    with pytest.raises(TypeError, match="as text= or as its alias narrative=, not both"):
        processor(images=image, text=NARRATIVE, narrative=NARRATIVE, phrases=PHRASES)
    with pytest.raises(ValueError, match="record 0 has both 'narrative' and its alias 'text'"):
        grounder({"image": image, "narrative": NARRATIVE, "text": NARRATIVE, "phrases": PHRASES})
    with pytest.raises(TypeError, match="phrases were given without a narrative"):
        grounder(image, phrases=PHRASES)
    with pytest.raises(TypeError, match="no input"):
        grounder(narrative=NARRATIVE, phrases=PHRASES)


# Runs in a fresh interpreter with the package made unimportable: only transformers and the repository's files.
TRANSFORMERS_ONLY = textwrap.dedent(
    """
    import sys
    sys.modules["narrative_grounding"] = None  # `import narrative_grounding` now raises ImportError
    try:
        import narrative_grounding  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("narrative_grounding is importable")

    import PIL.Image
    import torch
    from transformers import AutoModel, AutoProcessor, pipeline

    image_path, out_dir, sources = sys.argv[1], sys.argv[2], sys.argv[3:]
    narrative = {narrative!r}
    phrases = {phrases!r}
    image = PIL.Image.open(image_path)
    for index, source in enumerate(sources):
        model = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = processor(images=image, text=narrative, phrases=phrases)
        with torch.no_grad():
            outputs = model(**inputs)
        by_hand = processor.post_process_panoptic_narrative_grounding(outputs, inputs=inputs)[0]
        inferred = pipeline(model=source, trust_remote_code=True)
        named = pipeline("{task}", model=source, trust_remote_code=True)
        assert type(inferred).__module__.startswith("transformers_modules"), type(inferred).__module__
        results = {{
            "auto": by_hand["masks"],
            "pipeline": inferred(image, narrative, phrases)["masks"],
            "pipeline_task": named(image, text=narrative, phrases=phrases)["masks"],
        }}
        if index == 0:  # a transformers-only user's own save carries the pipeline on
            model.save_pretrained(f"{{out_dir}}/resaved")
            processor.save_pretrained(f"{{out_dir}}/resaved")
            resaved = pipeline(model=f"{{out_dir}}/resaved", trust_remote_code=True)
            results["resaved_pipeline"] = resaved(image, narrative, phrases)["masks"]
        torch.save(results, f"{{out_dir}}/masks-{{index}}.pt")
    assert not any(name.startswith("narrative_grounding") for name in sys.modules if sys.modules[name])
    print("OK")
    """
).format(narrative=NARRATIVE, phrases=PHRASES, task=PIPELINE_TASK)


@pytest.mark.slow  # two sources in a fresh interpreter: ~35 s on a shared 2-core machine
def test_transformers_alone_runs_the_saved_and_the_pushed_checkpoint(trained, local_hub, tmp_path) -> None:
    folder, model, processor = trained
    repo_id = f"{local_hub.namespace}/epng-tiny-pipeline-{uuid.uuid4().hex[:8]}"
    model.push_to_hub(repo_id)
    processor.push_to_hub(repo_id)
    pushed = set(HfApi().list_repo_files(repo_id))
    assert PIPELINE_FILES | {"config.json", "model.safetensors", "processor_config.json"} <= pushed

    image_path = tmp_path / "bear.png"
    picture().save(image_path)
    expected = expected_masks(model, processor, PIL.Image.open(image_path))
    assert expected.any() and not expected.all()  # a comparison that can fail
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}  # HF_ENDPOINT etc. of the local Hub
    done = subprocess.run(
        [sys.executable, "-c", TRANSFORMERS_ONLY, str(image_path), str(tmp_path), str(folder), repo_id],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-4000:]
    assert "Do you wish to run the custom code" not in done.stdout + done.stderr  # nothing asked twice
    assert PIPELINE_FILES <= {path.name for path in (tmp_path / "resaved").iterdir()}
    for index in (0, 1):
        results = torch.load(tmp_path / f"masks-{index}.pt")
        assert len(results) == (4 if index == 0 else 3)
        for name, masks in results.items():
            assert torch.equal(masks, expected), (index, name)


def test_config_push_uploads_the_pipeline(local_hub, tmp_path) -> None:
    config = load_config("epng-tiny")
    pushed = f"{local_hub.namespace}/epng-tiny-config-{uuid.uuid4().hex[:8]}"
    config.push_to_hub(pushed)
    saved_and_pushed = f"{local_hub.namespace}/epng-tiny-config-{uuid.uuid4().hex[:8]}"
    config.save_pretrained(
        str(tmp_path), push_to_hub=True, repo_id=saved_and_pushed
    )  # transformers wants a str here
    for repo_id in (pushed, saved_and_pushed):
        assert PIPELINE_FILES | {"config.json"} <= set(HfApi().list_repo_files(repo_id)), repo_id
    assert PIPELINE_FILES <= {path.name for path in tmp_path.iterdir()}
