"""The benchmark's training-step mode (sharpose.benchmark.training_step, `bench/throughput.py --train`) on
tiny configurations on the CPU."""
import copy
import json

import pytest
import torch

from sharpose import create_model
from sharpose.benchmark import TINY_OVERRIDES, BenchmarkSettings
from sharpose.benchmark.cli import main
from sharpose.benchmark.training_step import (
    TrainingStep,
    run_training_benchmark,
    synthetic_training_batch,
    training_optimizer,
)
from sharpose.engine.config import TrainConfig
from sharpose.training import pose_loss

TINY_MODELS = ["sharpose_small_256x192", "vitpose_small_256x192"]
# the benchmark's tiny block at a quarter of the pixels: a training step in a fraction of a second
TINY = dict(TINY_OVERRIDES, input_size=(128, 96))


@pytest.fixture(scope="module")
def train_result():
    settings = BenchmarkSettings(
        models=TINY_MODELS, batch_sizes=[2], warmup=1, iters=2, backends=["reference", "triton"],
        model_overrides=dict(TINY), progress=False,
    )
    return json.loads(json.dumps(run_training_benchmark(settings).to_json()))  # as a --json reader sees it


def test_train_mode_records_both_models_side_by_side(train_result):
    records = {(r["family"], r["backend"]): r for r in train_result["records"]}
    assert set(records) == {("vitpose", "sdpa"), ("sharpose", "reference"), ("sharpose", "triton")}
    assert train_result["settings"]["hf_peer"] is False  # no training loss for transformers' model
    vit, ours = records[("vitpose", "sdpa")], records[("sharpose", "reference")]
    for r in (vit, ours):
        assert r["status"] == "ok" and r["mode"] == "train" and r["dtype"] == "fp32" and r["batch_size"] == 2
        assert len(r["times_ms"]) == 2 and all(t > 0 for t in r["times_ms"])
        assert r["img_per_s"] > 0 and r["img_per_s"] == pytest.approx(2e3 / r["ms_per_batch"])
    # training runs every sample through both stages
    assert (ours["exit_rate"], ours["achieved_exit_rate"]) == (0.0, 0.0)
    assert ours["speedup_vs_vitpose"] == pytest.approx(ours["img_per_s"] / vit["img_per_s"])
    assert ours["speedup_vs_vitpose_min"] == pytest.approx(vit["ms_min"] / ours["ms_min"])
    assert vit["speedup_vs_vitpose"] == pytest.approx(1.0)
    triton = records[("sharpose", "triton")]  # settings on the CPU: the kernels would run interpreted
    assert triton["status"] == "unavailable" and "CUDA" in triton["reason"]
    assert any("training steps" in note for note in train_result["notes"])


def tiny_model_and_batch(name, batch_size=2):
    torch.manual_seed(0)
    model = create_model(name, **TINY).train()
    images = torch.randn(batch_size, 3, *TINY["input_size"])
    batch = synthetic_training_batch(images, num_keypoints=17, heatmap_size=(32, 24))
    return model, batch


@pytest.mark.parametrize("name", TINY_MODELS)
def test_benchmark_step_is_the_training_step(name):
    model, batch = tiny_model_and_batch(name)
    untouched = copy.deepcopy(model)
    optimizer = training_optimizer(model)
    step = TrainingStep(model, batch, optimizer)

    torch.manual_seed(1)  # the same drop-path draws in both forwards
    terms = step()
    torch.manual_seed(1)
    expected = pose_loss(untouched(batch["image"]), batch, quality_lambda=TrainConfig().quality_lambda,
                         input_size=TINY["input_size"])
    # the same operations in the same order on the same float32 values: equal up to float32 rounding
    torch.testing.assert_close(terms["loss"], expected.total.detach())
    if name.startswith("sharpose"):  # SHaRPose's loss: both heatmaps and the quality term, with its weight
        assert TrainConfig().quality_lambda > 0 and terms["quality_loss"] > 0
        torch.testing.assert_close(terms["loss"], terms["heatmap_loss_coarse"] + terms["heatmap_loss_fine"]
                                   + TrainConfig().quality_lambda * terms["quality_loss"])

    # the optimizer stepped: every parameter moved and AdamW holds one step of state for each
    before = dict(untouched.named_parameters())
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []
    assert all(int(optimizer.state[p]["step"]) == 1 for p in model.parameters())


def test_synthetic_batch_is_shaped_like_a_collated_training_batch():
    images = torch.randn(3, 3, 128, 96)
    batch = synthetic_training_batch(images, num_keypoints=17, heatmap_size=(32, 24))
    assert batch["image"] is images
    assert batch["target"].shape == (3, 17, 32, 24) and batch["target_weight"].shape == (3, 17, 1)
    assert batch["joints"].shape == (3, 17, 3) and batch["scale"].shape == (3, 2)
    weight = batch["target_weight"][..., 0]
    assert 0 < weight.sum() < weight.numel()  # labelled and unlabelled joints both occur
    # a labelled joint's target peaks near 1 at its pixel; an unlabelled one's is all zero
    assert torch.all(batch["target"].amax((2, 3))[weight > 0] > 0.5)
    assert torch.all(batch["target"][weight == 0] == 0)


def test_bf16_autocast_step_keeps_float32_weights_and_steps():
    model, batch = tiny_model_and_batch("sharpose_small_256x192")
    untouched = copy.deepcopy(model)
    terms = TrainingStep(model, batch, training_optimizer(model), amp="bf16")()
    assert torch.isfinite(terms["loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), untouched.parameters()))


def test_cli_train_writes_the_records(tmp_path, capsys):
    out = tmp_path / "train.json"
    assert main(["--train", "--tiny", "--models", ",".join(TINY_MODELS), "--batch-size", "1", "--warmup", "0",
                 "--iters", "1", "--no-progress", "--flop-cache", "none", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| train |" in printed and "training steps" in printed
    records = json.loads(out.read_text())["records"]
    assert {r["mode"] for r in records} == {"train"}
    assert {r["family"] for r in records if r["status"] == "ok"} == {"sharpose", "vitpose"}


@pytest.mark.parametrize("extra", [["--exit-rate", "0.5"], ["--cuda-graphs"], ["--compile"]])
def test_cli_train_rejects_inference_only_options_in_one_line(extra, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--train", "--tiny", *extra])
    message = str(stop.value.code)
    assert message.startswith("--train") and "\n" not in message and extra[0] in message
