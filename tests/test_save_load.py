"""Round trips: config, safetensors weights, strict loading, trust_remote_code, pretrained encoders, variants."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from tiny_models import TEST_VOCAB_SIZE, make_inputs, tiny_config, tiny_model
from transformers import AutoConfig, AutoModel, BertConfig, BertModel

from narrative_grounding import (
    PngConfig,
    PngForPanopticNarrativeGrounding,
    available_variants,
    load_config,
    load_variant,
)


def test_config_round_trip_is_exact(tmp_path):
    config = tiny_config(lpa_distance="euclidean", sal_temperature=0.07, backbone_trainable_stages=1)
    config.save_pretrained(tmp_path)
    loaded = PngConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.backbone_config.timm_model_args == config.backbone_config.timm_model_args
    assert isinstance(AutoConfig.from_pretrained(tmp_path), PngConfig)


def test_paper_config_defaults():
    config = PngConfig()
    assert config.model_type == "panoptic_narrative_grounding"
    assert config.backbone_config.backbone == "resnet101" and config.text_config.hidden_size == 768
    assert (config.num_communicator_layers, config.num_attention_heads, config.ffn_dim, config.d_model) == (
        3,
        8,
        2048,
        768,
    )
    assert (config.bce_loss_weight, config.dice_loss_weight, config.sal_loss_weight) == (2.0, 2.0, 1.0)
    assert (
        config.freeze_text_encoder
        and config.backbone_trainable_stages == 2
        and config.lpa_distance_clamp == 2.0
    )


def test_invalid_config_names_the_field():
    with pytest.raises(Exception, match="lpa_distance"):
        PngConfig(lpa_distance="manhattan")


def test_model_round_trip_is_exact(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = PngForPanopticNarrativeGrounding.from_pretrained(tmp_path).eval()
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    inputs = make_inputs([2, 1])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).pred_masks, model(**inputs).pred_masks, atol=0, rtol=0)
    assert isinstance(AutoModel.from_pretrained(tmp_path), PngForPanopticNarrativeGrounding)


def test_loading_keeps_the_configured_freezing(tmp_path):
    tiny_model(freeze_text_encoder=True, backbone_trainable_stages=1).save_pretrained(tmp_path)
    loaded = PngForPanopticNarrativeGrounding.from_pretrained(tmp_path)
    assert not any(p.requires_grad for p in loaded.text_encoder.parameters())
    assert all(
        p.requires_grad for n, p in loaded.visual_encoder.backbone.named_parameters() if ".layer4." in n
    )
    assert not any(
        p.requires_grad for n, p in loaded.visual_encoder.backbone.named_parameters() if ".layer3." in n
    )


def _gradient_strides_differ(model) -> list[str]:
    encoder = model.train().visual_encoder
    encoder.zero_grad(set_to_none=True)
    features = encoder(torch.randn(2, 3, 64, 64))
    sum(feature.mean() for feature in features.values()).backward()
    return [
        name
        for name, parameter in encoder.named_parameters()
        if parameter.grad is not None and parameter.grad.stride() != parameter.stride()
    ]


def test_visual_encoder_weight_gradients_keep_their_strides_on_cpu(tmp_path):
    # DistributedDataParallel's buckets follow the parameters' strides: a gradient with others (the strided 1x1
    # convolutions' under NHWC inputs) made it warn "Grad strides do not match bucket view strides"
    model = tiny_model(backbone_trainable_stages=4)
    assert _gradient_strides_differ(model) == []
    model.save_pretrained(tmp_path)
    loaded = PngForPanopticNarrativeGrounding.from_pretrained(tmp_path)  # loading replaces the parameters
    assert _gradient_strides_differ(loaded) == []
    assert _gradient_strides_differ(loaded.to(torch.float64).to(torch.float32)) == []
    weight = loaded.visual_encoder.backbone._backbone.layer2[0].downsample[0].weight
    assert weight.stride() == torch.empty_like(weight, memory_format=torch.channels_last).stride()


def test_mismatched_checkpoint_fails_loudly_naming_the_keys(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["head.layers.0.lpa.prior_scale"]
    weights["head.unknown.weight"] = torch.zeros(2)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"head\.layers\.0\.lpa\.prior_scale.*head\.unknown\.weight"):
        PngForPanopticNarrativeGrounding.from_pretrained(tmp_path)
    model, info = PngForPanopticNarrativeGrounding.from_pretrained(
        tmp_path, strict=False, output_loading_info=True
    )
    assert info["missing_keys"] == {"head.layers.0.lpa.prior_scale"}
    assert torch.equal(model.head.layers[0].lpa.prior_scale, torch.ones(4))  # freshly initialised, W_j = 1


def test_trust_remote_code_in_a_process_that_never_imports_the_package(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"].endswith("PngForPanopticNarrativeGrounding")
    for module in ("modeling_png.py", "configuration_png.py", "attention.py", "heads_epng.py", "losses.py"):
        assert (tmp_path / module).is_file(), module
    inputs = make_inputs([2])
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        torch.save(model(**inputs).pred_masks, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert "narrative_grounding" not in sys.modules, "the package was imported"
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            masks = model(**inputs).pred_masks
        torch.testing.assert_close(masks, torch.load({str(tmp_path / "expected.pt")!r}), atol=0, rtol=0)
        print(type(model).__module__)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformers_modules" in result.stdout


def test_pretrained_encoders_are_loaded_and_never_reinitialised(tmp_path):
    config = tiny_config()
    torch.manual_seed(7)
    bert = BertModel(
        BertConfig(**{**config.text_config.to_dict(), "vocab_size": TEST_VOCAB_SIZE}), add_pooling_layer=False
    )
    bert.save_pretrained(tmp_path / "bert")
    timm_args = config.backbone_config.timm_model_args
    resnet = timm.create_model(config.backbone_config.backbone, **timm_args)
    save_file(resnet.state_dict(), tmp_path / "resnet.safetensors")

    model = PngForPanopticNarrativeGrounding.from_pretrained_encoders(
        config,
        text_model_name_or_path=str(tmp_path / "bert"),
        backbone_pretrained=tmp_path / "resnet.safetensors",
    )
    for name, tensor in bert.state_dict().items():
        assert torch.equal(model.text_encoder.bert.state_dict()[name], tensor), name
    backbone_state = model.visual_encoder.backbone._backbone.state_dict()
    for name, tensor in resnet.state_dict().items():
        if name in backbone_state:
            assert torch.equal(backbone_state[name], tensor), name
    # And they survive a save / load round trip untouched by _init_weights.
    model.save_pretrained(tmp_path / "png")
    loaded = PngForPanopticNarrativeGrounding.from_pretrained(tmp_path / "png")
    assert torch.equal(
        loaded.text_encoder.bert.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight
    )


@pytest.mark.parametrize("name", available_variants())
def test_every_variant_builds(name):
    variant = load_variant(name)
    config = load_config(name)
    assert config.grounding_head in name
    if "tiny" in name:
        model = PngForPanopticNarrativeGrounding(config)
        size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        assert size_mb < 10, f"{name} is {size_mb:.1f} MB"
        inputs = make_inputs([2], height=variant.image_size, width=variant.image_size)
        inputs["input_ids"] = inputs["input_ids"] % config.text_config.vocab_size
        with torch.no_grad():
            stride = config.epng_mask_stride if config.grounding_head == "epng" else 4
            assert model.eval()(**inputs).pred_masks.shape[-1] == variant.image_size // stride
    else:
        with torch.device("meta"):  # paper sizes: build the graph without allocating 700 MB
            model = PngForPanopticNarrativeGrounding(config)
        assert 150e6 < sum(p.numel() for p in model.parameters()) < 260e6


def test_unknown_variant_lists_the_available_ones():
    with pytest.raises(ValueError, match="epng-tiny"):
        load_config("epng-huge")
