"""hub_configs/: one Hub repository folder per variant, read as it is by from_pretrained; the conversion from
the former single-file format; `narrative-grounding variants` and `publish` (against the local Hub)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer

from narrative_grounding import (
    PngConfig,
    PngImageProcessor,
    PngProcessor,
    available_variants,
    create_model,
    load_config,
    load_processor,
    load_variant,
)
from narrative_grounding.cli import main
from narrative_grounding.factory import HUB_CONFIGS_DIR, ships_tokenizer, variant_path
from narrative_grounding.hub_folders import (
    CODE_ENTRIES,
    convert_legacy_variant,
    parameter_counts,
    save_model_folder,
    write_hub_repository,
)

REPO = Path(__file__).resolve().parents[1]
VARIANTS = available_variants()
CARD_SECTIONS = ("## Parameters", "## Paper", "## Expected results", "## How to train it", "## License")


def test_the_variants_are_the_top_level_folders() -> None:
    assert sorted(path.name for path in (REPO / "hub_configs").iterdir()) == VARIANTS
    assert {"epng-tiny", "epng-r101-bert-base", "drmn-tiny", "drmn-r101-bert-base"} <= set(VARIANTS)
    assert not (REPO / "src" / "narrative_grounding" / "hub_configs").exists()


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_folder_loads_with_from_pretrained_as_it_is(name: str) -> None:
    folder = HUB_CONFIGS_DIR / name
    config = PngConfig.from_pretrained(folder)
    auto_config = AutoConfig.from_pretrained(folder)
    assert type(auto_config) is PngConfig
    as_read = [{**c.to_dict(), "_name_or_path": None} for c in (config, auto_config, load_config(name))]
    assert as_read[0] == as_read[1] == as_read[2]
    assert config.grounding_head in name
    image_processor = AutoImageProcessor.from_pretrained(folder)
    assert isinstance(image_processor, PngImageProcessor)
    assert image_processor.size.height == image_processor.size.width == load_variant(name).image_size
    if ships_tokenizer(folder):
        processor = PngProcessor.from_pretrained(folder)
        assert isinstance(AutoProcessor.from_pretrained(folder), PngProcessor)
        assert len(processor.tokenizer) == config.text_config.vocab_size
        assert AutoTokenizer.from_pretrained(folder).get_vocab() == processor.tokenizer.get_vocab()
    else:  # the tokenizer comes from the text checkpoint config.json names
        assert load_variant(name).tokenizer == config.text_config.name_or_path == "bert-base-uncased"
        assert config.text_config.vocab_size == 30522


def without_library_version(text: str) -> str:
    """A saved JSON file without the `transformers_version` line, which names whichever transformers release
    wrote the file, not its content."""
    return re.sub(r'^\s*"transformers_version": "[^"]*",?\n', "", text, flags=re.MULTILINE)


@pytest.mark.parametrize("name", VARIANTS)
def test_folders_hold_data_only_and_are_what_save_pretrained_writes(name: str, tmp_path: Path) -> None:
    folder = HUB_CONFIGS_DIR / name
    assert not list(folder.glob("*.py")), "the modules are added when publishing, never stored here"
    for path in folder.glob("*.json"):
        text = path.read_text()
        assert not any(f'"{key}"' in text for key in CODE_ENTRIES), f"{path} points at module files"
    # Regenerating the folder from what it holds gives the same files: nothing was edited by hand.
    processor = (
        PngProcessor.from_pretrained(folder)
        if ships_tokenizer(folder)
        else PngImageProcessor.from_pretrained(folder)
    )
    save_model_folder(tmp_path, load_config(name), processor, with_code=False)
    for path in tmp_path.iterdir():
        if path.name.startswith("tokenizer"):  # shipped as the tokenizer build script writes them
            continue
        assert without_library_version(path.read_text()) == without_library_version(
            (folder / path.name).read_text()
        ), path.name


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_has_a_model_card(name: str) -> None:
    card = ModelCard.load(HUB_CONFIGS_DIR / name / "README.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    for section in CARD_SECTIONS:
        assert section in card.text, f"{name}: the card lacks {section!r}"
    total, trainable = parameter_counts(load_config(name))["total"]
    assert f"| total | {total / 1e6:.2f}M | {trainable / 1e6:.2f}M |" in card.text
    assert "arxiv.org/abs/" in card.text
    # how to train it: from the variant itself, or from the converted checkpoint it describes
    assert f"training/train.py --model {name}" in card.text or "narrative-grounding convert" in card.text


def test_tiny_variants_ship_the_same_tokenizer() -> None:
    tiny = [name for name in VARIANTS if ships_tokenizer(HUB_CONFIGS_DIR / name)]
    assert {"epng-tiny", "drmn-tiny"} <= set(tiny)
    for name in tiny:
        for file in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            assert (HUB_CONFIGS_DIR / name / file).read_bytes() == (
                HUB_CONFIGS_DIR / "epng-tiny" / file
            ).read_bytes()


def test_factory_by_name_and_by_folder(tmp_path: Path) -> None:
    model = create_model("epng-tiny", d_model=64, text_config={"num_hidden_layers": 1})
    assert model.config.d_model == 64 and model.config.text_config.num_hidden_layers == 1
    assert model.config.text_config.hidden_size == 64  # the other text fields are kept
    processor = load_processor("epng-tiny")
    assert processor.image_processor.size.height == 128
    # any folder laid out like the shipped ones works too
    write_hub_repository("drmn-tiny", tmp_path / "copy")
    assert load_config(tmp_path / "copy").grounding_head == "drmn"
    assert variant_path("drmn-tiny") == HUB_CONFIGS_DIR / "drmn-tiny"
    with pytest.raises(ValueError, match="available: .*epng-tiny"):
        load_config("epng-huge")


# ------------------------------------------------------------------------------------------- conversion
def _legacy_record(**changes) -> dict:
    record = {
        "_description": "A test variant.",
        "tokenizer": "tokenizer",
        "image_size": 96,
        "config": {
            "backbone_config": {
                "backbone": "resnet18",
                "out_indices": [1, 2, 3, 4],
                "timm_model_args": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64]},
            },
            "text_config": {
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 64,
            },
            "grounding_head": "drmn",
            "fpn_channels": 16,
            "drmn_hidden_dim": 32,
            "drmn_num_heads": 2,
        },
    }
    record.update(changes)
    return record


def test_convert_legacy_variant_with_a_shipped_tokenizer(tmp_path: Path) -> None:
    AutoTokenizer.from_pretrained(HUB_CONFIGS_DIR / "epng-tiny").save_pretrained(tmp_path / "tokenizer")
    (tmp_path / "drmn-test.json").write_text(json.dumps(_legacy_record()))
    folder = convert_legacy_variant(tmp_path / "drmn-test.json", tmp_path / "out")
    assert folder == tmp_path / "out" / "drmn-test"
    config = PngConfig.from_pretrained(folder)
    assert config.grounding_head == "drmn" and config.drmn_hidden_dim == 32
    assert config.text_config.vocab_size == len(AutoTokenizer.from_pretrained(tmp_path / "tokenizer"))
    processor = load_processor(folder)
    assert processor.image_processor.size.height == 96
    card = (folder / "README.md").read_text()
    assert "A test variant." in card and "Context Does Matter" in card
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_legacy_variant(tmp_path / "drmn-test.json", tmp_path / "out")
    convert_legacy_variant(tmp_path / "drmn-test.json", tmp_path / "out", overwrite=True)


def test_convert_legacy_variant_naming_the_former_tiny_tokenizer_folder(tmp_path: Path) -> None:
    (tmp_path / "drmn-former.json").write_text(json.dumps(_legacy_record(tokenizer="tokenizer-tiny")))
    folder = convert_legacy_variant(tmp_path / "drmn-former.json", tmp_path / "out")
    for name in ("tokenizer.json", "vocab.txt"):
        assert (folder / name).read_bytes() == (HUB_CONFIGS_DIR / "epng-tiny" / name).read_bytes()
    assert "# drmn-former" in (folder / "README.md").read_text()
    assert load_config(folder).text_config.vocab_size == 3978


def test_convert_legacy_variant_with_a_hub_tokenizer_and_bad_files(tmp_path: Path) -> None:
    record = _legacy_record(tokenizer="bert-base-uncased", _expected_results="AR 12.3 somewhere.")
    (tmp_path / "hub.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="vocab_size is required"):
        convert_legacy_variant(tmp_path / "hub.json", tmp_path / "out")
    record["config"]["text_config"]["vocab_size"] = 30522
    (tmp_path / "hub.json").write_text(json.dumps(record))
    folder = convert_legacy_variant(tmp_path / "hub.json", tmp_path / "out")
    assert sorted(path.name for path in folder.iterdir()) == [
        "README.md",
        "config.json",
        "preprocessor_config.json",
    ]
    assert load_variant(folder).tokenizer == "bert-base-uncased"
    assert "AR 12.3 somewhere." in (folder / "README.md").read_text()

    (tmp_path / "bad.json").write_text(json.dumps({"config": {}, "tokenizer": "x"}))
    with pytest.raises(ValueError, match=r"bad.json lacks the field\(s\) \['image_size'\]"):
        convert_legacy_variant(tmp_path / "bad.json", tmp_path / "out")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json cannot be read as JSON"):
        convert_legacy_variant(tmp_path / "broken.json", tmp_path / "out")


@pytest.mark.slow  # a fresh interpreter importing torch + transformers; the conversion itself is tested above
def test_convert_script_runs(tmp_path: Path) -> None:
    AutoTokenizer.from_pretrained(HUB_CONFIGS_DIR / "epng-tiny").save_pretrained(tmp_path / "tokenizer")
    (tmp_path / "drmn-script.json").write_text(json.dumps(_legacy_record()))
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "convert_legacy_variant.py"), str(tmp_path / "drmn-script.json"),
         "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "drmn-script" / "config.json").is_file()


# ------------------------------------------------------------------------------------------- commands
def test_cli_lists_every_variant(capsys) -> None:
    assert main(["variants"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == VARIANTS


def test_publish_a_variant_and_load_it_remotely_without_the_package(local_hub, tmp_path: Path) -> None:
    repo_id = f"{local_hub.namespace}/epng-tiny-{uuid.uuid4().hex[:8]}"
    assert main(["publish", "epng-tiny", "--repo_id", repo_id]) == 0
    files = set(HfApi().list_repo_files(repo_id))
    expected = {"README.md", "config.json", "processor_config.json", "tokenizer.json", "vocab.txt"}
    expected |= {
        "configuration_png.py",
        "modeling_png.py",
        "heads_epng.py",
        "processing_png.py",
        "image_processing_png.py",
        "pipeline_png.py",  # the pipeline travels with every published variant
    }
    assert expected <= files, expected - files
    config = json.loads(Path(HfApi().hf_hub_download(repo_id, "config.json")).read_text())
    assert "panoptic-narrative-grounding" in config["custom_pipelines"]
    assert not any(name.endswith(".safetensors") for name in files)

    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np, PIL.Image, torch
        from transformers import AutoConfig, AutoModel, AutoProcessor
        config = AutoConfig.from_pretrained({repo_id!r}, trust_remote_code=True)
        model = AutoModel.from_config(config, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({repo_id!r}, trust_remote_code=True)
        assert "narrative_grounding" not in sys.modules, "the package was imported"
        image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
        inputs = processor(images=image, text="A black bear on a tree.", phrases=["A black bear", "a tree"])
        with torch.no_grad():
            outputs = model(**{{k: v for k, v in inputs.items() if k in processor.model_input_names}})
        masks = processor.post_process_panoptic_narrative_grounding(outputs, inputs=inputs)[0]["masks"]
        print(type(model).__module__, tuple(masks.shape))
        """
    )
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformers_modules" in result.stdout and "(2, 60, 80)" in result.stdout


def test_publish_a_variant_without_a_shipped_tokenizer(local_hub) -> None:
    repo_id = f"{local_hub.namespace}/drmn-r101-{uuid.uuid4().hex[:8]}"
    assert (
        main(["publish", "drmn-r101-bert-base", "--repo_id", repo_id, "--commit_message", "DRMN config"]) == 0
    )
    api = HfApi()
    files = set(api.list_repo_files(repo_id))
    assert {
        "README.md",
        "config.json",
        "preprocessor_config.json",
        "heads_drmn.py",
        "image_processing_png.py",
    } <= files
    assert "tokenizer.json" not in files
    config = json.loads(Path(api.hf_hub_download(repo_id, "config.json")).read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_png.PngForPanopticNarrativeGrounding"
    assert config["text_config"]["_name_or_path"] == "bert-base-uncased"
    assert api.list_repo_commits(repo_id)[0].title == "DRMN config"
