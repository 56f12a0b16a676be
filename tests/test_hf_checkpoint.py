"""HF transformers' VitPoseForPoseEstimation weights load into ViTPose, strictly.

The HF names used here are written from HF's published layout (embeddings / encoder.layer.N with separate
query, key, value / head.deconv1, batchnorm1, deconv2, batchnorm2, conv), independently of the loader.
"""
from __future__ import annotations

import json
import re
import struct

import pytest
import torch

from sharpose import CheckpointError, load_checkpoint
from sharpose.checkpoint import CheckpointMismatch
from sharpose.models import create_model

SMALL = dict(embed_dim=64, depth=2, num_heads=4, input_size=(64, 48))
HEAD = {"deconv_layers.0": "deconv1", "deconv_layers.1": "batchnorm1", "deconv_layers.3": "deconv2",
        "deconv_layers.4": "batchnorm2", "final_layer": "conv"}


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.rand_like(value) + 0.5 if value.dim() == 1 else torch.randn_like(value) * 0.2)
    return model.eval()


def to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ViTPose weights under HF's names (the inverse of what the loader does, written out by hand)."""
    hf = {}
    for key, value in state.items():
        if key.startswith("blocks."):
            _, layer, rest = key.split(".", 2)
            prefix = f"backbone.encoder.layer.{layer}."
            if rest.startswith("attn.qkv."):
                kind = rest.rsplit(".", 1)[1]
                for name, part in zip(("query", "key", "value"), value.chunk(3)):
                    hf[f"{prefix}attention.attention.{name}.{kind}"] = part.clone()
                continue
            rest = (rest.replace("attn.proj.", "attention.output.dense.")
                    .replace("norm1.", "layernorm_before.").replace("norm2.", "layernorm_after."))
            hf[prefix + rest] = value
        elif key == "pos_embed":
            hf["backbone.embeddings.position_embeddings"] = value
        elif key.startswith("patch_embed.proj."):
            hf[key.replace("patch_embed.proj.", "backbone.embeddings.patch_embeddings.projection.")] = value
        elif key.startswith("norm."):
            hf["backbone.layernorm." + key.split(".", 1)[1]] = value
        else:  # decoder.<module>.<param>
            module, param = key.removeprefix("decoder.").rsplit(".", 1)
            hf[f"head.{HEAD[module]}.{param}"] = value
    return hf


def write_safetensors(tensors: dict[str, torch.Tensor], path) -> None:
    """The safetensors layout: u64 header length, JSON header (dtype, shape, byte offsets), raw bytes."""
    names = {torch.float32: "F32", torch.int64: "I64"}
    header, blobs, offset = {}, [], 0
    for name, tensor in tensors.items():
        blob = tensor.contiguous().numpy().tobytes()
        header[name] = {"dtype": names[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


@pytest.mark.parametrize("decoder", ["classic", "simple"])
@pytest.mark.parametrize("container", ["safetensors", "state dict"])
def test_hf_layout_loads_exactly(tmp_path, decoder, container):
    source = randomised(create_model("vitpose_small_256x192", decoder=decoder, **SMALL))
    hf = to_hf(source.state_dict())
    path = tmp_path / ("model.safetensors" if container == "safetensors" else "hf.pth")
    write_safetensors(hf, path) if container == "safetensors" else torch.save(hf, path)
    target = create_model("vitpose_small_256x192", decoder=decoder, **SMALL)
    load_checkpoint(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    images = torch.randn(2, 3, *SMALL["input_size"])
    with torch.no_grad():
        assert torch.equal(target.eval()(images).heatmaps, source(images).heatmaps)


def test_hf_layout_is_loaded_strictly(tmp_path):
    hf = to_hf(create_model("vitpose_small_256x192", **SMALL).state_dict())
    del hf["backbone.encoder.layer.1.attention.attention.value.bias"]
    torch.save(hf, tmp_path / "hf.pth")
    with pytest.raises(CheckpointMismatch) as caught:
        load_checkpoint(create_model("vitpose_small_256x192", **SMALL), tmp_path / "hf.pth")
    assert "blocks.1.attn.qkv.bias" in caught.value.missing
    assert any(k.endswith("encoder.layer.1.attention.attention.query.bias") for k in caught.value.unexpected)
    assert "layer_norm_eps" in str(caught.value)  # HF's defaults that differ are named


def test_mismatch_details_are_attributes(tmp_path):
    hf = to_hf(create_model("vitpose_small_256x192", **SMALL).state_dict())
    torch.save(hf, tmp_path / "hf.pth")
    with pytest.raises(CheckpointMismatch) as caught:
        load_checkpoint(create_model("vitpose_small_256x192", **dict(SMALL, embed_dim=32)), tmp_path / "hf.pth")
    err = caught.value
    assert not err.missing and not err.unexpected
    assert ("patch_embed.proj.weight", (64, 3, 16, 16), (32, 3, 16, 16)) in err.mis_shaped
    assert err.summary().startswith(f"{len(err.mis_shaped)} mis-shaped keys (e.g. ")


@pytest.mark.parametrize("field, value", [("layer_norm_eps", 1e-12), ("out_indices", [1])])
def test_hf_config_that_is_not_vitpose_is_named(tmp_path, field, value):
    write_safetensors(to_hf(create_model("vitpose_small_256x192", **SMALL).state_dict()), tmp_path / "model.safetensors")
    backbone = {"layer_norm_eps": 1e-6, "out_indices": [2], field: value}
    (tmp_path / "config.json").write_text(json.dumps({"backbone_config": backbone}))
    with pytest.raises(CheckpointError, match=re.escape(f"does not describe ViTPose: {field} {value}")):
        load_checkpoint(create_model("vitpose_small_256x192", **SMALL), tmp_path / "model.safetensors")


@pytest.mark.parametrize("decoder", ["classic", "simple"])
def test_hf_model_with_random_weights_gives_the_same_heatmaps(tmp_path, decoder):
    transformers = pytest.importorskip("transformers", reason="HF transformers not installed (extras 'test' or 'hf')")
    if not hasattr(transformers, "VitPoseForPoseEstimation"):
        pytest.skip(f"transformers {transformers.__version__} has no VitPose")
    backbone = transformers.VitPoseBackboneConfig(
        image_size=list(SMALL["input_size"]), hidden_size=SMALL["embed_dim"], num_hidden_layers=SMALL["depth"],
        num_attention_heads=SMALL["num_heads"], layer_norm_eps=1e-6, out_indices=[SMALL["depth"]])
    hf_model = randomised(transformers.VitPoseForPoseEstimation(
        transformers.VitPoseConfig(backbone_config=backbone, num_labels=17, use_simple_decoder=decoder == "simple")))
    hf_model.save_pretrained(tmp_path)
    ours = create_model("vitpose_small_256x192", decoder=decoder, **SMALL)
    load_checkpoint(ours, tmp_path / "model.safetensors")  # with HF's config.json beside it
    images = torch.randn(2, 3, *SMALL["input_size"])
    with torch.no_grad():
        expected = hf_model(pixel_values=images).heatmaps
        got = ours.eval()(images).heatmaps
    # the same fp32 operations (HF may pick another attention or upsampling kernel): measured 0 (classic) and
    # 1.1e-6 (simple) here; 1e-5 leaves room for other kernels' summation order over 64 channels
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-5
