"""Converters: detectron2's Panoptic FPN pickle and the EPNG authors' checkpoints -> our model folders.

The detectron2 reference below is written from detectron2's documented structure (modeling/backbone/resnet.py,
fpn.py, layers/batch_norm.py), in plain PyTorch, with detectron2's module names, so that its state dict has
the checkpoint's key names; the EPNG source state dict has the names and shapes of the authors' MainModule,
its backbone made by torchvision's own BackboneWithFPN (what `resnet_fpn_backbone` builds).
"""

from __future__ import annotations

import copy
import json
import pickle
import uuid

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import HfApi
from huggingface_hub.errors import StrictDataclassClassValidationError
from torch import nn

from narrative_grounding import (
    PngConfig,
    PngForPanopticNarrativeGrounding,
    PngImageProcessor,
    PngProcessor,
    load_config,
)
from narrative_grounding.cli import main as cli_main
from narrative_grounding.conversion import (
    KeyMapError,
    convert_drmn,
    convert_epng,
    convert_panoptic_fpn,
    convert_state_dict,
    convert_visual_encoder,
    read_detectron2_checkpoint,
)
from narrative_grounding.conversion.panoptic_fpn import panoptic_fpn_overrides
from narrative_grounding.factory import load_variant, variant_path
from narrative_grounding.modeling.text_encoder import TextEncoder

# A narrow bottleneck ResNet (blocks 1, 1, 2, 1; widths 8..64, outputs 32..256) and a 16-channel FPN.
BLOCKS = (1, 1, 2, 1)
WIDTHS = (8, 16, 32, 64)
FPN_CHANNELS = 16
RESNET_STEM = {"stem_type": "", "stem_width": 64}
TINY_D2_OVERRIDES = {
    "backbone_config": {
        "backbone": "resnet50",
        # detectron2's stem is ResNet's 7x7 convolution of 64 channels (epng-tiny has timm's deep stem)
        "timm_model_args": {"layers": list(BLOCKS), "channels": list(WIDTHS), **RESNET_STEM},
    },
    "fpn_channels": FPN_CHANNELS,
    "d_model": 48,
    "num_attention_heads": 4,
}
PIXEL_MEAN = (103.53, 116.28, 123.675)
IMAGE_SIZE = 128  # epng-tiny's processor size: the test image is not resized


# ----------------------------------------------------------------------------- detectron2 reference
class FrozenNorm(nn.Module):
    """detectron2's FrozenBatchNorm2d: four buffers, y = (x - mean) / sqrt(var + eps) * weight + bias."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return x * scale.view(1, -1, 1, 1) + (self.bias - self.running_mean * scale).view(1, -1, 1, 1)


class NormedConv(nn.Conv2d):
    """detectron2's layers.Conv2d with a norm: keys `<name>.weight` and `<name>.norm.*`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, bias=False, **kwargs)
        self.norm = FrozenNorm(self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, width: int, stride: int) -> None:
        super().__init__()
        self.shortcut = (
            NormedConv(in_channels, out_channels, 1, stride=stride) if in_channels != out_channels else None
        )
        self.conv1 = NormedConv(in_channels, width, 1, stride=stride)  # STRIDE_IN_1X1 = True
        self.conv2 = NormedConv(width, width, 3, stride=1, padding=1)
        self.conv3 = NormedConv(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))
        return F.relu(out + (self.shortcut(x) if self.shortcut is not None else x))


class Stem(nn.Module):
    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = NormedConv(3, out_channels, 7, stride=2, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    def __init__(self, blocks_per_stage=BLOCKS, widths=WIDTHS, stem_channels: int = 64) -> None:
        super().__init__()
        self.stem = Stem(stem_channels)
        in_channels = stem_channels
        for index, (blocks, width) in enumerate(zip(blocks_per_stage, widths, strict=True)):
            stride = 1 if index == 0 else 2
            stage = nn.Sequential()
            for block in range(blocks):
                stage.append(Bottleneck(in_channels, 4 * width, width, stride if block == 0 else 1))
                in_channels = 4 * width
            self.add_module(f"res{index + 2}", stage)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        for stage in (self.res2, self.res3, self.res4, self.res5):
            x = stage(x)
            outputs.append(x)
        return outputs


class ResNetFPN(nn.Module):
    """detectron2's FPN(bottom_up=ResNet, in_features=res2..res5, norm="", fuse_type="sum")."""

    def __init__(self, blocks_per_stage=BLOCKS, widths=WIDTHS, channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        self.bottom_up = ResNet(blocks_per_stage, widths)
        for stage, width in zip((2, 3, 4, 5), widths, strict=True):
            self.add_module(f"fpn_lateral{stage}", nn.Conv2d(4 * width, channels, 1))
            self.add_module(f"fpn_output{stage}", nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.bottom_up(x)
        previous = self.fpn_lateral5(features[-1])
        results = [self.fpn_output5(previous)]
        for stage in (4, 3, 2):
            lateral = getattr(self, f"fpn_lateral{stage}")(features[stage - 2])
            previous = lateral + F.interpolate(previous, scale_factor=2.0, mode="nearest")
            results.insert(0, getattr(self, f"fpn_output{stage}")(previous))
        return results  # p2..p5


def randomise(module: nn.Module, seed: int) -> None:
    """Random weights with O(1) activations, and random frozen-norm statistics (non-trivial BN folding)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 1.5 + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif tensor.dim() == 1:  # norm weights
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif tensor.dim() == 4:  # conv weights, fan-in scaled
                fan_in = tensor.shape[1] * tensor.shape[2] * tensor.shape[3]
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (1.0 / fan_in) ** 0.5)


def detectron2_model_dict(reference: ResNetFPN) -> dict[str, np.ndarray]:
    """The "model" entry of a detectron2 Panoptic FPN pickle: the backbone under detectron2's names, plus
    heads the converter must drop and the pixel statistics older detectron2 versions saved."""
    generator = np.random.default_rng(0)
    model = {f"backbone.{key}": value.numpy().copy() for key, value in reference.state_dict().items()}
    for key, shape in {
        "proposal_generator.rpn_head.conv.weight": (FPN_CHANNELS, FPN_CHANNELS, 3, 3),
        "proposal_generator.rpn_head.objectness_logits.weight": (3, FPN_CHANNELS, 1, 1),
        "roi_heads.box_head.fc1.weight": (1024, FPN_CHANNELS * 49),
        "roi_heads.box_predictor.cls_score.weight": (81, 1024),
        "roi_heads.mask_head.mask_fcn1.weight": (FPN_CHANNELS, FPN_CHANNELS, 3, 3),
        "sem_seg_head.p2.0.weight": (128, FPN_CHANNELS, 3, 3),
        "sem_seg_head.predictor.weight": (54, 128, 1, 1),
    }.items():
        model[key] = generator.standard_normal(shape).astype(np.float32)
    model["pixel_mean"] = np.array(PIXEL_MEAN, dtype=np.float32).reshape(3, 1, 1)
    model["pixel_std"] = np.ones((3, 1, 1), dtype=np.float32)
    return model


@pytest.fixture(scope="module")
def reference() -> ResNetFPN:
    model = ResNetFPN().eval()
    randomise(model, seed=0)
    return model


@pytest.fixture(scope="module")
def detectron2_pickle(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("d2") / "model_final.pkl"
    with path.open("wb") as file:
        pickle.dump({"model": detectron2_model_dict(reference), "__author__": "test"}, file)
    return path


@pytest.fixture(scope="module")
def converted_dir(detectron2_pickle, tmp_path_factory):
    output = tmp_path_factory.mktemp("converted")
    convert_panoptic_fpn(detectron2_pickle, output, variant="epng-tiny", config_overrides=TINY_D2_OVERRIDES)
    return output


# ----------------------------------------------------------------------------------- Panoptic FPN
def test_converted_visual_encoder_matches_detectron2_reference(reference, converted_dir):
    model = PngForPanopticNarrativeGrounding.from_pretrained(converted_dir).eval()
    processor = PngProcessor.from_pretrained(converted_dir)
    image = np.random.default_rng(1).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)  # RGB

    pixel_values = processor.image_processor(image, return_tensors="pt")["pixel_values"]
    # detectron2's input: BGR, 0..255, minus PIXEL_MEAN, divided by PIXEL_STD (1).
    bgr = torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1).float()
    expected_input = (bgr - torch.tensor(PIXEL_MEAN).view(3, 1, 1))[None]
    torch.testing.assert_close(pixel_values, expected_input, atol=1e-5, rtol=0)

    # In float64 on both sides: the check is the weight mapping, not the summation order of the two sides'
    # convolution kernels (on CPU the visual encoder runs NHWC, the reference NCHW).
    with torch.no_grad():
        ours = copy.deepcopy(model.visual_encoder).double()(pixel_values.double())
        theirs = copy.deepcopy(reference).double()(expected_input.double())
    for stride, expected in zip((4, 8, 16, 32), theirs, strict=True):
        assert ours[stride].shape == expected.shape
        assert expected.abs().max() > 0.1  # a real signal, not vanishing activations
        assert (ours[stride] - expected).abs().max() <= 1e-5, f"stride {stride}"

    # The stride placement matters: the same weights with timm's stride-in-3x3 give other features.
    moved = PngForPanopticNarrativeGrounding.from_pretrained(
        converted_dir, backbone_stride_in_1x1=False
    ).eval()
    with torch.no_grad():
        assert (moved.visual_encoder(pixel_values)[8] - theirs[1]).abs().max() > 1e-2


def test_converted_folder_carries_detectron2_conventions(converted_dir):
    config = PngConfig.from_pretrained(converted_dir)
    assert config.backbone_stride_in_1x1 is True
    assert config.backbone_config.freeze_batch_norm_2d is True
    image_config = json.loads((converted_dir / "processor_config.json").read_text())["image_processor"]
    assert image_config["channel_order"] == "BGR"
    assert image_config["do_rescale"] is False
    assert image_config["image_mean"] == pytest.approx(PIXEL_MEAN)
    assert image_config["image_std"] == [1.0, 1.0, 1.0]


def test_converter_reports_dropped_heads(detectron2_pickle):
    converted = convert_panoptic_fpn(
        detectron2_pickle, variant="epng-tiny", config_overrides=TINY_D2_OVERRIDES
    )
    dropped = converted.result.dropped
    assert {key.split(".")[0] for key in dropped} == {
        "proposal_generator",
        "roi_heads",
        "sem_seg_head",
        "pixel_mean",
        "pixel_std",
    }
    assert not converted.result.unrepresented
    backbone_keys = {key for key in detectron2_model_dict(ResNetFPN()) if key.startswith("backbone.")}
    assert set(converted.result.mapped) == backbone_keys
    assert "RPN" in converted.result.summary()


@pytest.fixture(scope="module")
def tiny_d2_model():
    overrides = {
        **TINY_D2_OVERRIDES,
        "backbone_stride_in_1x1": True,
        "backbone_config": {**TINY_D2_OVERRIDES["backbone_config"], "freeze_batch_norm_2d": True},
    }
    return PngForPanopticNarrativeGrounding(load_config("epng-tiny", **overrides))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("backbone.fpn_output3.bias"), "visual_encoder.neck.output.1.bias"),
        (lambda m: m.pop("backbone.bottom_up.res4.1.conv2.norm.running_var"), "layer3.1.bn2.running_var"),
        (
            lambda m: m.__setitem__("backbone.bottom_up.res6.0.conv1.weight", np.zeros(1, np.float32)),
            "backbone.bottom_up.res6.0.conv1.weight",
        ),
        (
            lambda m: m.__setitem__("backbone.fpn_lateral2.weight", np.zeros((8, 32, 1, 1), np.float32)),
            r"visual_encoder.neck.lateral.0.weight: \(8, 32, 1, 1\)",
        ),
    ],
    ids=["missing-tensor", "missing-norm-statistic", "unknown-key", "wrong-shape"],
)
def test_mismatch_names_the_keys(reference, tiny_d2_model, tmp_path, edit, message):
    model_dict = detectron2_model_dict(reference)
    edit(model_dict)
    path = tmp_path / "broken.pkl"
    path.write_bytes(pickle.dumps({"model": model_dict, "__author__": "test"}))
    tensors, _ = read_detectron2_checkpoint(path)
    with pytest.raises(KeyMapError, match=message):
        convert_visual_encoder(tiny_d2_model, tensors)


def test_caffe2_norms_without_statistics_get_identity_statistics(reference, tmp_path):
    model_dict = {k: v for k, v in detectron2_model_dict(reference).items() if "running_" not in k}
    path = tmp_path / "caffe2.pkl"
    path.write_bytes(pickle.dumps({"model": model_dict}))
    tensors, _ = read_detectron2_checkpoint(path)
    assert torch.equal(tensors["backbone.bottom_up.stem.conv1.norm.running_var"], torch.ones(64))
    assert torch.equal(tensors["backbone.bottom_up.res2.0.conv1.norm.running_mean"], torch.zeros(WIDTHS[0]))


class _Hostile:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def test_pickle_reader_refuses_code(tmp_path):
    path = tmp_path / "hostile.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": _Hostile()}}))
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        read_detectron2_checkpoint(path)
    path.write_bytes(pickle.dumps({"weights": {}}))
    with pytest.raises(ValueError, match="'model' dict"):
        read_detectron2_checkpoint(path)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_reader_reads_every_protocol(reference, tmp_path, protocol):
    """Model zoo files come from many writers: Python 3 at protocol 0-2 stores array bytes through
    `_codecs.encode`, protocol 5 rebuilds arrays with numpy's `_frombuffer`, numpy 1 names `numpy.core`."""
    model_dict = detectron2_model_dict(reference)
    data = pickle.dumps({"model": model_dict, "__author__": "test"}, protocol=protocol)
    if protocol <= 2:  # text GLOBAL opcodes: spell the module as numpy 1 wrote it
        data = data.replace(b"numpy._core.", b"numpy.core.")
    path = tmp_path / "model_final.pkl"
    path.write_bytes(data)
    tensors, extra = read_detectron2_checkpoint(path)
    assert extra == {"__author__": "test"}
    assert tensors.keys() == model_dict.keys()
    for key, value in model_dict.items():
        assert torch.equal(tensors[key], torch.from_numpy(value)), key


def test_stride_in_1x1_needs_bottleneck_blocks():
    with pytest.raises(ValueError, match="bottleneck blocks.*layer1.0 is a BasicBlock"):
        PngForPanopticNarrativeGrounding(load_config("epng-tiny", backbone_stride_in_1x1=True))


def test_converted_variant_equals_the_converter_settings():
    """The shipped variant and `convert panoptic-fpn --variant epng-r101-bert-base` agree."""
    from narrative_grounding.conversion.panoptic_fpn import DETECTRON2_IMAGE_PROCESSOR

    shipped = load_config("epng-r101-panoptic-fpn-bert-base").to_dict()
    converted = load_config("epng-r101-bert-base", **panoptic_fpn_overrides()).to_dict()
    assert shipped == converted
    image_processor = PngImageProcessor.from_pretrained(str(variant_path("epng-r101-panoptic-fpn-bert-base")))
    for key, value in DETECTRON2_IMAGE_PROCESSOR.items():
        assert getattr(image_processor, key) == (tuple(value) if isinstance(value, list) else value), key


def test_cli_convert_and_push_to_hub(detectron2_pickle, tmp_path, local_hub, capsys):
    output = tmp_path / "out"
    overrides = json.dumps(TINY_D2_OVERRIDES)
    argv = ["convert", "panoptic-fpn", str(detectron2_pickle), str(output), "--variant", "epng-tiny"]
    assert cli_main([*argv, "--config-overrides", overrides]) == 0
    assert "dropped deliberately" in capsys.readouterr().out

    repo_id = f"{local_hub.namespace}/panoptic-fpn-{uuid.uuid4().hex[:8]}"
    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=output)
    local = PngForPanopticNarrativeGrounding.from_pretrained(output)
    remote = PngForPanopticNarrativeGrounding.from_pretrained(repo_id, token=local_hub.token)
    for (name, tensor), (_, other) in zip(
        local.visual_encoder.state_dict().items(), remote.visual_encoder.state_dict().items(), strict=True
    ):
        assert torch.equal(tensor, other), name
    assert PngImageProcessor.from_pretrained(repo_id, token=local_hub.token).channel_order == "BGR"

    # A bad file: a one-line error, exit status 1.
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    argv = ["convert", "panoptic-fpn", str(bad), str(tmp_path / "x"), "--variant", "epng-tiny"]
    capsys.readouterr()  # the upload's progress bars
    assert cli_main(argv) == 1
    error = capsys.readouterr().err
    assert (
        error.startswith("narrative-grounding convert panoptic-fpn: error: ") and len(error.splitlines()) == 1
    )
    assert "not a readable detectron2 checkpoint" in error and "Traceback" not in error
    with pytest.raises(ValueError, match="not a readable detectron2 checkpoint"):  # --debug: the traceback
        cli_main(["--debug", *argv])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--variant", "epng-tinyy"], "unknown model variant 'epng-tinyy'"),
        (["--config_overrides", '{"d_modle": 128}'], "did you mean 'd_model'"),
        (["--config_overrides", '{"d_model": "wide"}'], "d_model"),
    ],
)
def test_cli_convert_into_a_bad_variant_or_config_is_one_line(
    detectron2_pickle, tmp_path, capsys, extra, message
):
    output = tmp_path / "out"
    argv = ["convert", "panoptic-fpn", str(detectron2_pickle), str(output), *extra]
    assert cli_main(argv) == 1
    error = capsys.readouterr().err
    assert (
        error.startswith("narrative-grounding convert panoptic-fpn: error: ") and len(error.splitlines()) == 1
    )
    assert message in error and not output.exists()


def test_cli_convert_with_a_text_model_and_the_papers_layer_averaging(detectron2_pickle, tmp_path, capsys):
    """`convert panoptic-fpn --text_model BERT --config_overrides '{"text_layers_to_average": ...}'` (the
    recipe of docs/reproduce.md, with a small local BERT for bert-base-uncased): both encoders pretrained, the
    averaging and freezing of the overrides in the saved config and in the computation."""
    from transformers import AutoTokenizer, BertModel

    torch.manual_seed(11)
    bert_dir = tmp_path / "bert"
    bert = BertModel(load_config("epng-tiny").text_config, add_pooling_layer=False).eval()
    bert.save_pretrained(bert_dir)
    AutoTokenizer.from_pretrained(load_variant("epng-tiny").tokenizer).save_pretrained(bert_dir)
    output = tmp_path / "converted"
    overrides = {**TINY_D2_OVERRIDES, "text_layers_to_average": 2, "freeze_text_encoder": True}
    argv = ["convert", "panoptic-fpn", str(detectron2_pickle), str(output), "--variant", "epng-tiny"]
    argv += ["--text_model", str(bert_dir), "--config_overrides", json.dumps(overrides)]
    assert cli_main(argv) == 0
    assert "randomly initialised" not in capsys.readouterr().err

    model = PngForPanopticNarrativeGrounding.from_pretrained(output).eval()
    assert (model.config.text_layers_to_average, model.config.freeze_text_encoder) == (2, True)
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    for name, tensor in bert.state_dict().items():
        assert torch.equal(model.text_encoder.bert.state_dict()[name], tensor), name
    tensors, _ = read_detectron2_checkpoint(detectron2_pickle)
    assert torch.equal(
        model.visual_encoder.backbone._backbone.layer3[1].conv2.weight,
        tensors["backbone.bottom_up.res4.1.conv2.weight"],
    )
    processor = PngProcessor.from_pretrained(output)
    inputs = processor.tokenizer(["a black bear on this tree"], return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**inputs, output_hidden_states=True).hidden_states  # embeddings + 2 layers
        expected = torch.stack(hidden[-2:]).mean(dim=0)  # the mean of the last 2
        torch.testing.assert_close(model.text_encoder(**inputs), expected)


def test_image_processor_channel_order():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[..., 0], image[..., 2] = 200, 10  # red
    bgr = PngImageProcessor(
        channel_order="BGR", do_normalize=False, do_rescale=False, size={"height": 32, "width": 32}
    )
    rgb = PngImageProcessor(do_normalize=False, do_rescale=False, size={"height": 32, "width": 32})
    assert bgr(image)["pixel_values"][0, :, 0, 0].tolist() == [10.0, 0.0, 200.0]
    assert rgb(image)["pixel_values"][0, :, 0, 0].tolist() == [200.0, 0.0, 10.0]
    with pytest.raises(ValueError, match="channel_order must be one of"):
        PngImageProcessor(channel_order="bgr")(image)


# ------------------------------------------------------------------------------------------ text side
def test_text_layer_averaging_matches_bert_hidden_states():
    config = load_config("epng-tiny", text_layers_to_average=3, text_config={"num_hidden_layers": 2})
    torch.manual_seed(0)
    encoder = TextEncoder(config).eval()
    input_ids = torch.randint(5, 100, (2, 9))
    with torch.no_grad():
        hidden = encoder.bert(input_ids, output_hidden_states=True).hidden_states  # embeddings + 2 layers
        expected = torch.stack(hidden).mean(dim=0)
        torch.testing.assert_close(encoder(input_ids), expected)
    with pytest.raises(
        (ValueError, StrictDataclassClassValidationError),
        match=r"text_layers_to_average \(4\) exceeds BERT's 3",
    ):
        load_config("epng-tiny", text_layers_to_average=4, text_config={"num_hidden_layers": 2})


def test_pretrained_bert_with_too_few_layers_for_the_averaging_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    ).save_pretrained(tmp_path / "bert")
    config = load_config("epng-tiny", text_layers_to_average=3)  # valid for the variant's 2-layer BERT
    with pytest.raises(ValueError, match=r"text_layers_to_average \(3\) exceeds the 2 hidden states"):
        PngForPanopticNarrativeGrounding.from_pretrained_encoders(
            config, text_model_name_or_path=str(tmp_path / "bert")
        )


# ------------------------------------------------------------------------------------------------ EPNG
EPNG_OVERRIDES = {
    "backbone_config": {
        "backbone": "resnet50",
        "freeze_batch_norm_2d": True,
        "timm_model_args": {
            "layers": list(BLOCKS),
            "channels": [64, 128, 256, 512],
            "base_width": 16,
            **RESNET_STEM,
        },
    },
    "fpn_channels": 32,
    "d_model": 96,  # 3 x fpn_channels: EPNG has no fusion projection
    "num_attention_heads": 4,
    "ffn_dim": 192,
    "num_communicator_layers": 2,
    "use_stride4_skip": False,
    # epng-tiny's phrase decoder, mask refinement and stride-2 masks are ours: EPNG's checkpoints have none
    "epng_phrase_decoder_layers": 0,
    "epng_phrase_decoder_reads_tokens": False,
    "epng_mask_refinement_kernels": 0,
    "epng_mask_stride": 4,
}


def torchvision_fpn_backbone() -> nn.Module:
    """What EPNG's `resnet_fpn_backbone` builds (torchvision ResNet with frozen norms + FPN), narrowed."""
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.resnet import Bottleneck as TorchvisionBottleneck
    from torchvision.models.resnet import ResNet as TorchvisionResNet
    from torchvision.ops.misc import FrozenBatchNorm2d

    resnet = TorchvisionResNet(
        TorchvisionBottleneck, list(BLOCKS), width_per_group=16, norm_layer=FrozenBatchNorm2d
    )
    backbone = BackboneWithFPN(
        resnet,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[256, 512, 1024, 2048],
        out_channels=EPNG_OVERRIDES["fpn_channels"],
    )
    randomise(backbone, seed=1)
    return backbone.eval()


def epng_head_shapes(
    *, d_model: int, text_dim: int, ffn_dim: int, heads: int, layers: int
) -> dict[str, tuple[int, ...]]:
    """The head tensors of EPNG's MainModule (TextVisualEncoder of DecoderLayers, text_linear): names and
    shapes as models/EPNG/{MainModule,TextVisualEncoder,decoder,attention,DSA_attention}.py build them."""
    d = d_model
    shapes = {"text_linear.weight": (d, text_dim), "text_linear.bias": (d,)}
    for layer in range(layers):
        prefix = f"encoder.layers.{layer}"
        for block in ("self_att", "enc_att"):
            for projection in ("fc_q", "fc_k", "fc_v", "fc_o"):
                shapes[f"{prefix}.{block}.attention.{projection}.weight"] = (d, d)
                shapes[f"{prefix}.{block}.attention.{projection}.bias"] = (d,)
            shapes[f"{prefix}.{block}.layer_norm.weight"] = shapes[f"{prefix}.{block}.layer_norm.bias"] = (d,)
        shapes[f"{prefix}.self_att.attention.W"] = (heads, 1, 1)
        for norm in ("lnorm1", "lnorm2", "pwff.layer_norm"):
            shapes[f"{prefix}.{norm}.weight"] = shapes[f"{prefix}.{norm}.bias"] = (d,)
        shapes.update({f"{prefix}.pwff.fc1.weight": (ffn_dim, d), f"{prefix}.pwff.fc1.bias": (ffn_dim,)})
        shapes.update({f"{prefix}.pwff.fc2.weight": (d, ffn_dim), f"{prefix}.pwff.fc2.bias": (d,)})
    return shapes


def epng_head_state_dict(config: PngConfig, seed: int = 2) -> dict[str, torch.Tensor]:
    """EPNG's head tensors at the sizes of `config`, random values."""
    generator = torch.Generator().manual_seed(seed)
    shapes = epng_head_shapes(
        d_model=config.d_model,
        text_dim=config.text_config.hidden_size,
        ffn_dim=config.ffn_dim,
        heads=config.num_attention_heads,
        layers=config.num_communicator_layers,
    )
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


@pytest.fixture(scope="module")
def epng_source():
    config = load_config("epng-tiny", **EPNG_OVERRIDES)
    backbone = torchvision_fpn_backbone()
    state = {f"vs_backbone.{k}": v.clone() for k, v in backbone.state_dict().items()}
    state.update(epng_head_state_dict(config))
    return config, backbone, state


def test_epng_checkpoint_needs_the_released_layer_norms(epng_source, tmp_path):
    config, _, state = epng_source
    path = tmp_path / "checkpoint.pth"
    torch.save({"model_state": state}, path)
    with pytest.raises(KeyMapError, match="encoder.layers.0.lnorm1.weight: needs a LayerNorm") as error:
        convert_epng(path, variant="epng-tiny", config_overrides=EPNG_OVERRIDES)
    # weight and bias of lnorm1 and lnorm2 in every layer, and nothing else
    assert f"without a counterpart in this model ({4 * config.num_communicator_layers})" in str(error.value)


def test_epng_checkpoint_loads_strictly(epng_source, tmp_path):
    config, backbone, state = epng_source
    path = tmp_path / "checkpoint.pth"
    # As train_net.py saves it under DistributedDataParallel (with the wrapper's prefix, for robustness).
    torch.save(
        {"epoch": 3, "model_state": {f"module.{k}": v for k, v in state.items()}, "optimizer_state": {}}, path
    )
    output = tmp_path / "converted"
    converted = convert_epng(
        path, output, variant="epng-tiny", config_overrides=EPNG_OVERRIDES, allow_unrepresented=True
    )
    assert sorted(converted.result.unrepresented) == sorted(k for k in state if ".lnorm" in k)
    model = PngForPanopticNarrativeGrounding.from_pretrained(output).eval()  # strict by default

    layer = model.head.layers[1]
    fused = torch.cat([state[f"encoder.layers.1.self_att.attention.fc_{p}.weight"] for p in "qkv"])
    assert torch.equal(layer.lpa.qkv.weight, fused)
    assert torch.equal(layer.lpa.prior_scale, state["encoder.layers.1.self_att.attention.W"].flatten())
    assert torch.equal(layer.lpa_norm.weight, state["encoder.layers.1.self_att.layer_norm.weight"])
    assert torch.equal(
        layer.cross_attention.v_proj.bias, state["encoder.layers.1.enc_att.attention.fc_v.bias"]
    )
    assert torch.equal(layer.ffn[3].weight, state["encoder.layers.1.pwff.fc2.weight"])
    assert torch.equal(layer.ffn_norm.bias, state["encoder.layers.1.pwff.layer_norm.bias"])
    assert torch.equal(model.head.phrase_projection.weight, state["text_linear.weight"])

    # The visual encoder computes what torchvision's ResNet-FPN computes on the same input.
    pixel_values = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model.visual_encoder(pixel_values)
        theirs = backbone(pixel_values)
    for stride, name in zip((4, 8, 16, 32), ("0", "1", "2", "3"), strict=True):
        assert (ours[stride] - theirs[name]).abs().max() <= 1e-5, f"stride {stride}"

    image_config = json.loads((output / "processor_config.json").read_text())["image_processor"]
    assert image_config["image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert image_config["resample"] == 3


def test_epng_checkpoint_loads_completely_into_the_released_layer(epng_source, tmp_path):
    """With the released doubled Add & LN every tensor of the checkpoint has its place: nothing unrepresented."""
    _, _, state = epng_source
    path = tmp_path / "checkpoint.pth"
    torch.save({"model_state": state}, path)
    output = tmp_path / "converted"
    overrides = {**EPNG_OVERRIDES, "epng_residual_norm": "double"}
    converted = convert_epng(path, output, variant="epng-tiny", config_overrides=overrides)
    assert not converted.result.unrepresented
    model = PngForPanopticNarrativeGrounding.from_pretrained(output)  # strict by default
    for index, layer in enumerate(model.head.layers):
        prefix = f"encoder.layers.{index}"
        # theirs: lnorm1(x + self_att.layer_norm(x + LPA(x))); ours: lpa_norm(x + lpa_inner_norm(x + LPA(x)))
        assert torch.equal(layer.lpa_inner_norm.weight, state[f"{prefix}.self_att.layer_norm.weight"])
        assert torch.equal(layer.lpa_norm.bias, state[f"{prefix}.lnorm1.bias"])
        assert torch.equal(layer.cross_inner_norm.bias, state[f"{prefix}.enc_att.layer_norm.bias"])
        assert torch.equal(layer.cross_norm.weight, state[f"{prefix}.lnorm2.weight"])


def test_full_size_epng_checkpoint_fills_the_released_variant_exactly():
    """The authors' full-size MainModule (torchvision resnet_fpn_backbone("resnet101") with FPN 256; 3 decoder
    layers of d 768, 8 heads of 96, FFN 2048; text_linear 768 x 768: MainModule.py 12-19, TextVisualEncoder.py
    11) against the shipped released variant: every tensor placed, every shape equal (on the meta device)."""
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.resnet import Bottleneck as TorchvisionBottleneck
    from torchvision.models.resnet import ResNet as TorchvisionResNet
    from torchvision.ops.misc import FrozenBatchNorm2d

    from narrative_grounding.conversion import EPNG_KEY_MAP
    from narrative_grounding.conversion.converters import EPNG_VARIANT
    from narrative_grounding.conversion.key_map import prefixed_state_dict

    config = load_config(EPNG_VARIANT)
    with torch.device("meta"):
        resnet = TorchvisionResNet(TorchvisionBottleneck, [3, 4, 23, 3], norm_layer=FrozenBatchNorm2d)
        backbone = BackboneWithFPN(
            resnet,
            return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
            in_channels_list=[256, 512, 1024, 2048],
            out_channels=256,
        )
        model = PngForPanopticNarrativeGrounding(config)
        source = {f"vs_backbone.{k}": v for k, v in backbone.state_dict().items()}
        head = epng_head_shapes(d_model=768, text_dim=768, ffn_dim=2048, heads=8, layers=3)
        source.update({key: torch.empty(shape) for key, shape in head.items()})
    target = prefixed_state_dict(model.visual_encoder, "visual_encoder.")
    target.update(prefixed_state_dict(model.head, "head."))
    result = convert_state_dict(source, EPNG_KEY_MAP, target, config=config)  # raises on any mismatch
    assert not result.unrepresented and not result.dropped
    assert set(result.state_dict) == set(target) and len(result.mapped) == len(source)


def test_epng_converter_defaults_to_the_released_variant():
    from narrative_grounding.conversion.converters import EPNG_VARIANT

    assert load_config(EPNG_VARIANT).epng_residual_norm == "double"


@pytest.mark.parametrize(
    ("source_format", "converter"),
    [("panoptic-fpn", convert_panoptic_fpn), ("epng", convert_epng), ("drmn", convert_drmn)],
)
def test_cli_builds_the_variant_the_python_converter_builds(source_format, converter):
    """Without --variant, `convert epng` must build the released variant (into which an authors' checkpoint
    loads completely), as convert_epng does and docs/conversion.md says."""
    import inspect

    from narrative_grounding.cli import build_parser

    args = build_parser().parse_args(["convert", source_format, "checkpoint", "out"])
    assert args.variant == inspect.signature(converter).parameters["variant"].default


def test_cli_convert_epng(epng_source, tmp_path, capsys):
    _, _, state = epng_source
    path = tmp_path / "checkpoint.pth"
    torch.save({"model_state": state}, path)
    output = tmp_path / "converted"
    argv = ["convert", "epng", str(path), str(output), "--variant", "epng-tiny"]
    argv += ["--config_overrides", json.dumps(EPNG_OVERRIDES)]
    assert cli_main(argv) == 1  # the released LayerNorms have no counterpart: refused, named
    assert "narrative-grounding convert epng: error: " in capsys.readouterr().err and not output.exists()
    assert cli_main([*argv, "--allow-unrepresented"]) == 0  # the dashed spelling is an alias
    printed = capsys.readouterr()
    assert f"wrote {output}" in printed.out and "no --text_model given" in printed.err
    model = PngForPanopticNarrativeGrounding.from_pretrained(output)
    assert torch.equal(model.head.phrase_projection.weight, state["text_linear.weight"])


def test_epng_map_accepts_pre_013_torchvision_fpn_names(epng_source):
    from narrative_grounding.conversion import EPNG_KEY_MAP
    from narrative_grounding.conversion.key_map import prefixed_state_dict

    config, _, state = epng_source
    legacy = {k.replace("_blocks.0.0.", "_blocks.0."): v for k, v in state.items()}
    assert "vs_backbone.fpn.inner_blocks.0.weight" in legacy
    model = PngForPanopticNarrativeGrounding(config)
    target = prefixed_state_dict(model.visual_encoder, "visual_encoder.")
    target.update(prefixed_state_dict(model.head, "head."))
    result = convert_state_dict(legacy, EPNG_KEY_MAP, target, config=config, allow_unrepresented=True)
    assert torch.equal(
        result.state_dict["visual_encoder.neck.lateral.0.weight"],
        legacy["vs_backbone.fpn.inner_blocks.0.weight"],
    )


def test_full_size_resnet101_panoptic_fpn_converts(tmp_path):
    """detectron2's R101-FPN key set (res4 with 23 blocks, FPN 256) into the shipped variant, end to end."""
    reference = ResNetFPN((3, 4, 23, 3), (64, 128, 256, 512), channels=256).eval()
    randomise(reference, seed=4)
    model_dict = {f"backbone.{k}": v.numpy() for k, v in reference.state_dict().items()}
    path = tmp_path / "model_final_cafdb1.pkl"
    path.write_bytes(pickle.dumps({"model": model_dict, "__author__": "test"}))
    tiny_tokenizer = str(load_variant("epng-tiny").tokenizer)
    converted = convert_panoptic_fpn(
        path,
        tokenizer=tiny_tokenizer,
        config_overrides={
            "text_config": {
                "num_hidden_layers": 3,
                "hidden_size": 64,
                "num_attention_heads": 2,
                "intermediate_size": 128,
                "vocab_size": 128,
            }
        },
    )
    assert len(converted.result.mapped) == len(model_dict) == len(converted.model.visual_encoder.state_dict())
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5)) * 50
    with torch.no_grad():  # float64: see test_converted_visual_encoder_matches_detectron2_reference
        ours = converted.model.eval().visual_encoder.double()(image.double())
        theirs = reference.double()(image.double())
    for stride, expected in zip((4, 8, 16, 32), theirs, strict=True):
        torch.testing.assert_close(ours[stride], expected, atol=1e-5, rtol=1e-5)


def test_key_map_rows_extend_with_config_switches():
    """How a switch of ours completes a map: a row with `when` before the row that reports the key missing."""
    from types import SimpleNamespace

    from narrative_grounding.conversion import KeyRule

    rules = (
        KeyRule(r"block\.(\d)\.extra_norm\.(weight)", r"layers.\1.second_norm.\2", when=lambda c: c.released),
        KeyRule(r"block\.(\d)\.extra_norm\.weight", None, requires="a second norm (released=True)"),
        KeyRule(r"block\.(\d)\.q", r"layers.\1.qkv", part=(0, 2)),
        KeyRule(r"block\.(\d)\.k", r"layers.\1.qkv", part=(1, 2)),
    )
    source = {
        "block.0.extra_norm.weight": torch.ones(2),
        "block.0.q": torch.zeros(1, 2),
        "block.0.k": torch.ones(1, 2),
    }
    target = {"layers.0.qkv": torch.empty(2, 2)}
    result = convert_state_dict(
        source, rules, target, config=SimpleNamespace(released=False), allow_unrepresented=True
    )
    assert result.unrepresented == {"block.0.extra_norm.weight": "a second norm (released=True)"}
    assert torch.equal(result.state_dict["layers.0.qkv"], torch.tensor([[0.0, 0.0], [1.0, 1.0]]))

    target["layers.0.second_norm.weight"] = torch.empty(2)
    result = convert_state_dict(source, rules, target, config=SimpleNamespace(released=True))
    assert not result.unrepresented and torch.equal(
        result.state_dict["layers.0.second_norm.weight"], torch.ones(2)
    )

    with pytest.raises(KeyMapError, match=r"layers.0.qkv: parts \[1\] of 2 missing"):
        convert_state_dict({"block.0.q": torch.zeros(1, 2)}, rules, {"layers.0.qkv": torch.empty(2, 2)})
    with pytest.raises(ValueError, match="without a reason"):
        KeyRule(r"x", None)
