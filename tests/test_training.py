"""Training: configs, loss, layer-decay AdamW and schedule, initialisation, resume, atomic saves, DDP,
and a tiny model actually learning coco-mini."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import default_collate

from sharpose import create_model, load_checkpoint, save_checkpoint
from sharpose.checkpoint import CheckpointError, read_checkpoint
from sharpose.engine.builders import build_model, build_val_dataset
from sharpose.engine.config import ConfigError, check_files, load_config
from sharpose.engine.distributed import DistContext
from sharpose.evaluation import heatmap_oks
from sharpose.evaluation.runner import evaluate, evaluate_model
from sharpose.training import (
    LrSchedule,
    build_optimizer,
    initialise_from_checkpoint,
    joints_mse_loss,
    layer_decay_param_groups,
    pose_loss,
    train,
    train_step,
)
from sharpose.training.jsonlog import read_log
from sharpose.training.loop import seed_everything

from helpers import DATA_DIR, assert_rel_close, network_rel_tolerance

COCO_MINI = DATA_DIR / "coco-mini"
TINY = dict(embed_dim=64, depth=4, num_heads=4, input_size=(128, 96), drop_path_rate=0.0, backend="reference")


def tiny_config(tmp_path, *overrides):
    """The shipped tiny config on the bundled coco-mini, reference backend, writing into tmp_path."""
    return load_config("tiny", [
        f"data.root={COCO_MINI}", f"output_dir={tmp_path}", "model.overrides.backend=reference",
        "train.eval_interval=0", *overrides,
    ])


def coco_batch(n):
    """The first n coco-mini persons as a collated 128x96 batch (no augmentation)."""
    ds = build_val_dataset(load_config("tiny", [f"data.root={COCO_MINI}"]))
    return default_collate([ds[i] for i in range(n)])


# --- configs -----------------------------------------------------------------------------------------

def test_shipped_configs_load_and_match_their_models():
    for name in ("sharpose_small_256x192", "sharpose_small_384x288", "sharpose_base_256x192",
                 "sharpose_base_384x288", "vitpose_base_256x192", "tiny"):
        config = load_config(name, ["model.overrides.depth=1"])  # depth 1: quick to build
        assert build_model(config).input_size == tuple(config.data.input_size)
    small, base384 = load_config("sharpose_small_256x192"), load_config("sharpose_base_384x288")
    assert (small.train.epochs, small.train.quality_start_epoch, small.train.layer_decay) == (250, 210, 0.8)
    assert (base384.data.sigma, base384.eval.blur_kernel) == (3.0, 17)


def test_config_errors_name_the_key_and_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model: {name: sharpose_small_256x192}\noutput_dir: out\n"
                    "data: {train_ann: a.json, train_images: i, val_ann: a.json, val_images: i}\n"
                    "train: {lrr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: unknown key 'train\.lrr'; train accepts: batch_size"):
        load_config(path)
    path.write_text(path.read_text().replace("lrr: 0.1", "lr: 0.1"))
    with pytest.raises(ConfigError, match=r"mine\.yaml: train\.lr: expected a number, got str 'fast'"):
        load_config(path, ["train.lr=fast"])
    with pytest.raises(ConfigError, match=r"train\.betas: expected a list of 2 values"):
        load_config(path, ["train.betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"train\.amp: expected one of 'none', 'fp16', 'bf16', got str 'fp8'"):
        load_config(path, ["train.amp=fp8"])
    with pytest.raises(ConfigError, match=r"eval\.flip_test: expected true or false, got str 'yes please'"):
        load_config(path, ["eval.flip_test=yes please"])
    with pytest.raises(ConfigError, match=r"missing required key 'data\.val_images'"):
        load_config(path, ["data={train_ann: a, train_images: b, val_ann: c}"])
    with pytest.raises(ConfigError, match="no config file 'nope'.*shipped: .*tiny"):
        load_config("nope")
    config = load_config(path, [f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match=r"mine\.yaml: data\.train_ann: no such file: .*a\.json"):
        check_files(config, training=True)
    with pytest.raises(ConfigError, match=r"mine\.yaml: eval\.bbox_file is not set \(eval\.use_gt_bbox is false"):
        check_files(load_config(path, ["data.root=/", f"data.train_ann={path}", f"data.train_images={tmp_path}",
                                       f"data.val_ann={path}", f"data.val_images={tmp_path}"]), training=True)
    with pytest.raises(ConfigError, match=r"data\.input_size \[256, 192\] differs from the model's input_size"):
        build_model(load_config("tiny", ["data.input_size=[256, 192]"]))


def test_cli_reports_config_errors_without_a_traceback(capsys):
    from sharpose.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["tiny", "--set", "train.epochs=many"])
    assert exit_info.value.code == 2
    assert "error: " in capsys.readouterr().err


# --- loss ----------------------------------------------------------------------------------------------

def test_joints_mse_loss_is_mmpose_joints_mse_loss():
    pred, target = torch.randn(3, 5, 4, 6), torch.rand(3, 5, 4, 6)
    weight = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0]).repeat(3, 1)[..., None]
    # mmpose 0.x JointsMSELoss(use_target_weight=True): per joint nn.MSELoss of weighted maps, / K
    expected = sum(F.mse_loss(pred[:, j].flatten(1) * weight[:, j], target[:, j].flatten(1) * weight[:, j])
                   for j in range(5)) / 5
    torch.testing.assert_close(joints_mse_loss(pred, target, weight), expected)


def test_sharpose_loss_reaches_every_parameter_and_counts_only_valid_instances():
    batch = coco_batch(4)
    batch["target_weight"][0] = 0.0  # instance 0: no labelled joint, left out of the quality loss
    model = create_model("sharpose_small_256x192", **TINY)
    out = model(batch["image"])
    loss = pose_loss(out, batch, quality_lambda=0.0, input_size=(128, 96))
    loss.total.backward()
    assert all(p.grad is not None for p in model.parameters())  # DDP without find_unused_parameters
    heatmap_terms = loss.terms["heatmap_loss_coarse"] + loss.terms["heatmap_loss_fine"]
    assert loss.total.item() == pytest.approx(heatmap_terms.item())

    oks, valid = heatmap_oks(out.coarse_heatmaps, batch["joints"], batch["target_weight"][..., 0] > 0,
                             batch["scale"], input_size=(128, 96))
    assert valid.tolist() == [False, True, True, True]
    expected = F.mse_loss(out.quality[1:].detach(), oks[1:])
    assert loss.terms["quality_loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    weighted = pose_loss(out, batch, quality_lambda=0.03, input_size=(128, 96))
    assert weighted.total.item() == pytest.approx(loss.total.item() + 0.03 * expected.item(), rel=1e-6)


# --- optimizer and schedule ------------------------------------------------------------------------------

def test_layer_decay_groups_scale_lr_by_depth_and_skip_weight_decay_on_biases_norms_tokens():
    model = create_model("sharpose_small_256x192", **TINY)  # depth 4: layers 0 .. 5
    optimizer = build_optimizer(model, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.1, layer_decay=0.75)
    where = {name: group for group in optimizer.param_groups for name in group["param_names"]}
    assert sorted(where) == sorted(n for n, _ in model.named_parameters())  # each parameter exactly once
    expected = {  # name: (layer id, weight decay)
        "patch_embed.proj.weight": (0, 0.1), "patch_embed.proj.bias": (0, 0.0),
        "coarse_pos_embed": (0, 0.0), "fine_pos_embed": (0, 0.0),
        "quality_token": (0, 0.0), "keypoint_tokens": (0, 0.0),
        "blocks.0.attn.qkv.weight": (1, 0.1), "blocks.2.mlp.fc1.bias": (3, 0.0), "blocks.3.norm1.weight": (4, 0.0),
        "norm.weight": (5, 0.0), "reuse.mlp.fc1.weight": (5, 0.1), "quality_head.fc3.weight": (5, 0.1),
        "decoder.fc2.weight": (5, 0.1), "decoder.norm2.bias": (5, 0.0),
    }
    for name, (layer, decay) in expected.items():
        group = where[name]
        assert (group["layer_id"], group["weight_decay"]) == (layer, decay), name
        assert group["lr"] == pytest.approx(1e-3 * 0.75 ** (5 - layer)), name

    vit = create_model("vitpose_small_256x192", embed_dim=64, depth=2, num_heads=4, input_size=(128, 96))
    groups = {n: g for g in layer_decay_param_groups(vit, 0.1, 0.8) for n in g["param_names"]}
    assert (groups["pos_embed"]["layer_id"], groups["pos_embed"]["weight_decay"]) == (0, 0.0)
    assert groups["blocks.1.attn.proj.weight"]["lr_scale"] == pytest.approx(0.8)
    assert groups["decoder.deconv_layers.0.weight"]["lr_scale"] == 1.0
    assert groups["decoder.deconv_layers.1.weight"]["weight_decay"] == 0.0  # BatchNorm weight: 1-D


def test_schedule_is_mmcv_linear_warmup_then_step():
    schedule = LrSchedule(base_lr=5e-4, steps=(170, 200), gamma=0.1, warmup_iters=500, warmup_ratio=1e-3)
    assert schedule.lr(0, 0) == pytest.approx(5e-7)  # warmup_ratio x lr
    assert schedule.lr(250, 0) == pytest.approx(5e-4 * (1 - 0.5 * 0.999))
    assert schedule.lr(500, 0) == schedule.lr(10**6, 169) == pytest.approx(5e-4)
    assert schedule.lr(10**6, 170) == pytest.approx(5e-5)  # 0-based epoch 170: the 171st
    assert schedule.lr(10**6, 209) == pytest.approx(5e-6)
    assert schedule.lr(100, 170) == pytest.approx(5e-5 * (1 - 0.8 * 0.999))  # warm-up scales the decayed lr


# --- initialisation --------------------------------------------------------------------------------------

def bicubic(grid_tokens, src, dst):
    image = grid_tokens.T.reshape(1, -1, *src)
    return F.interpolate(image, size=dst, mode="bicubic", align_corners=False).reshape(grid_tokens.shape[1], -1).T


def test_init_from_mae_vitpose_and_sharpose_checkpoints(tmp_path):
    vit = create_model("vitpose_small_256x192", embed_dim=64, depth=4, num_heads=4, input_size=(128, 96))
    mae = {k: v for k, v in vit.state_dict().items() if not k.startswith(("decoder.", "pos_embed"))}
    mae["cls_token"] = torch.randn(1, 1, 64)
    mae["pos_embed"] = torch.randn(1, 197, 64)  # 14 x 14 at 224 x 224, plus the cls slot
    mae["decoder_pred.weight"] = torch.randn(768, 64)  # MAE's own decoder: not ours
    torch.save({"model": mae}, tmp_path / "mae.pth")

    model = create_model("sharpose_small_256x192", **TINY)  # coarse grid 4 x 3, fine 8 x 6
    report = initialise_from_checkpoint(model, tmp_path / "mae.pth")
    assert report.source == "MAE/timm ViT"
    torch.testing.assert_close(model.blocks[3].mlp.fc2.weight, mae["blocks.3.mlp.fc2.weight"])
    torch.testing.assert_close(model.coarse_pos_embed[0], bicubic(mae["pos_embed"][0, 1:], (14, 14), (4, 3)))
    torch.testing.assert_close(model.fine_pos_embed[0], bicubic(mae["pos_embed"][0, 1:], (14, 14), (8, 6)))
    assert set(report.resized) == {"coarse_pos_embed", "fine_pos_embed"}
    assert set(report.skipped) == {"cls_token", "decoder_pred.weight"}
    assert "quality_token" in report.kept and "decoder.fc1.weight" in report.kept
    assert len(report.loaded) == 2 + 4 * 12 + 2 + 2  # patch embed, blocks, norm, both position embeddings
    assert f"loaded {len(report.loaded)} tensors" in report.summary()

    # a released ViTPose checkpoint (mmpose layout): its extra pos-embed slot is added to every patch
    released = {"backbone.last_norm.weight" if k == "norm.weight" else
                "backbone.last_norm.bias" if k == "norm.bias" else
                k.replace("decoder.", "keypoint_head.") if k.startswith("decoder.") else f"backbone.{k}": v
                for k, v in vit.state_dict().items()}
    torch.save({"state_dict": released, "meta": {}}, tmp_path / "vitpose.pth")
    report = initialise_from_checkpoint(model, tmp_path / "vitpose.pth")
    pos = vit.pos_embed[0].detach()
    torch.testing.assert_close(model.fine_pos_embed[0], pos[1:] + pos[:1])  # same 8 x 6 grid
    torch.testing.assert_close(model.coarse_pos_embed[0], bicubic(pos[1:] + pos[:1], (8, 6), (4, 3)))
    torch.testing.assert_close(model.norm.weight, vit.norm.weight)
    assert any(k.startswith("decoder.deconv_layers") for k in report.skipped)  # ViTPose's decoder: skipped

    into_vitpose = create_model("vitpose_small_256x192", embed_dim=64, depth=4, num_heads=4, input_size=(128, 96))
    initialise_from_checkpoint(into_vitpose, tmp_path / "vitpose.pth")
    for key, value in vit.state_dict().items():
        torch.testing.assert_close(into_vitpose.state_dict()[key], value)

    # this project's SHaRPose checkpoint, into a larger input: position embeddings resized
    save_checkpoint(model, tmp_path / "own.pth")
    bigger = create_model("sharpose_small_256x192", **dict(TINY, input_size=(192, 128)))  # coarse 6 x 4
    report = initialise_from_checkpoint(bigger, tmp_path / "own.pth")
    torch.testing.assert_close(bigger.coarse_pos_embed[0], bicubic(model.coarse_pos_embed[0].detach(), (4, 3), (6, 4)))
    assert report.kept == report.skipped and all(k.startswith("decoder.") for k in report.skipped)  # 48x32 maps

    torch.save({"model": {"something.else": torch.zeros(3)}}, tmp_path / "unrelated.pth")
    with pytest.raises(CheckpointError, match="no tensor matching SHaRPose"):
        initialise_from_checkpoint(model, tmp_path / "unrelated.pth")


# --- checkpoints -----------------------------------------------------------------------------------------

def test_crash_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    model = create_model("sharpose_small_256x192", **TINY)
    path = tmp_path / "latest.pth"
    save_checkpoint(model, path, epoch=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.decoder.fc2.weight.add_(1.0)

    real_save = torch.save

    def crash_half_way(obj, f, *args, **kwargs):
        real_save({"partial": torch.zeros(10)}, f)  # some bytes reach the temp file, then the crash
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, path, epoch=2)
    monkeypatch.undo()

    reloaded = create_model("sharpose_small_256x192", **TINY)
    checkpoint = load_checkpoint(reloaded, path)
    assert checkpoint["epoch"] == 1
    for key, value in before.items():
        torch.testing.assert_close(reloaded.state_dict()[key], value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pth"]  # no temp file left behind


def test_resume_mid_epoch_gives_the_same_next_losses(tmp_path, one_thread):
    # augmentation and drop path on: the resumed run must replay data order, augmentation and RNG
    common = ["train.epochs=3", "train.log_interval=1", "train.batch_size=4", "train.warmup_iters=4",
              "train.quality_start_epoch=1", "model.overrides.drop_path_rate=0.2"]  # 3 iterations per epoch
    config = tiny_config(tmp_path / "full", *common)
    full = train(config, progress=False)
    assert full["iterations"] == 9
    assert load_config(tmp_path / "full" / "config.yaml").to_dict() == config.to_dict()  # what the run used
    stopped = train(tiny_config(tmp_path / "split", *common, "train.max_iters=4"), progress=False)
    assert stopped["stopped_early"] and stopped["iterations"] == 4  # in the middle of the second epoch
    # resumed with DataLoader workers this time: the data must not depend on them
    train(tiny_config(tmp_path / "split", *common, "data.workers=2"), resume=tmp_path / "split" / "latest.pth",
          progress=False)

    def losses(run):
        return [(r["iter"], r["loss"], r["quality_loss"]) for r in read_log(tmp_path / run / "log.jsonl")]

    assert losses("split") == losses("full")  # exactly: iterations 5 .. 9 after the restart included
    final_full = read_checkpoint(tmp_path / "full" / "latest.pth")
    final_split = read_checkpoint(tmp_path / "split" / "latest.pth")
    assert (final_split["epoch"], final_split["iteration"]) == (3, 9)
    for key, value in final_full["model"].items():
        assert torch.equal(final_split["model"][key], value), key


@pytest.mark.parametrize("interval,extra,saves", [
    (0, [], [(1, 3), (2, 6), (3, 9), (4, 12)]),  # every epoch end
    # iteration 6 ends epoch 2: saved at the epoch end, holding the completed epoch, once
    (2, [], [(0, 2), (1, 4), (2, 6), (2, 8), (3, 10), (4, 12)]),
    (5, [], [(1, 5), (3, 10), (4, 12)]),  # and the run's end
    (5, ["train.max_iters=7"], [(1, 5), (2, 7)]),  # and where max_iters stops it
    (5, ["train.max_iters=5"], [(1, 5)]),  # once
])
def test_latest_checkpoint_schedule(tmp_path, one_thread, monkeypatch, interval, extra, saves):
    import sharpose.training.loop as loop

    saved = []
    monkeypatch.setattr(loop, "save_training_state",
                        lambda path, model, optimizer, scaler, progress, *a, **k:
                        saved.append((progress.epoch, progress.iteration)))
    config = tiny_config(tmp_path, "train.epochs=4", "train.batch_size=4", f"train.checkpoint_interval={interval}",
                         "model.overrides={embed_dim: 32, depth: 1, num_heads: 2, input_size: [128, 96]}", *extra)
    train(config, progress=False)  # 12 coco-mini persons: 3 iterations per epoch
    assert saved == saves


def test_interrupted_run_says_how_to_continue(tmp_path):
    from sharpose.train import resume_hint

    config = tiny_config(tmp_path)
    assert resume_hint(None) == "nothing was trained"
    assert resume_hint(config).startswith("nothing was saved yet")
    (tmp_path / "latest.pth").write_bytes(b"")
    assert resume_hint(config).endswith(f"with --resume {tmp_path / 'latest.pth'}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vitpose_small_256x192", "sharpose_small_256x192"])
def test_trains_under_bf16_autocast(tmp_path, one_thread, name):
    # batches of 2: on a CPU without bf16 instructions (AVX2 only) a bf16 transposed convolution, ViTPose's
    # deconvolution head, runs 10 to 60 times slower than in fp32
    config = tiny_config(tmp_path, f"model.name={name}", "train.amp=bf16", "train.batch_size=2",
                         "train.max_iters=2", "train.log_interval=1", "train.grad_clip=1.0",
                         "model.overrides={embed_dim: 64, depth: 2, num_heads: 4, input_size: [128, 96]}")
    assert train(config, progress=False)["iterations"] == 2
    log = read_log(tmp_path / "log.jsonl")
    heatmap_keys = {"heatmap_loss"} if name.startswith("vitpose") else {"heatmap_loss_coarse", "heatmap_loss_fine"}
    assert [set(r) >= {"loss", "lr", "time"} | heatmap_keys for r in log] == [True, True]
    assert all(0.0 < r["loss"] < 1.0 for r in log)


# --- distributed -----------------------------------------------------------------------------------------

def _one_global_batch():
    return {k: v for k, v in coco_batch(8).items() if isinstance(v, torch.Tensor)}


LR = 1e-4
STEPS = 2


def _stepped_model(ddp_rank=None, init_file=None, steps=STEPS):
    """Parameters after `steps` optimizer steps on the 8-sample batch (DDP: this rank's half), and the
    (all-reduced, clipped) gradients each step applied."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("sharpose_small_256x192", **TINY)
    optimizer = build_optimizer(model, lr=LR, betas=(0.9, 0.999), weight_decay=0.1, layer_decay=0.75)
    names = {p: n for n, p in model.named_parameters()}
    grads = []
    optimizer.register_step_pre_hook(
        lambda opt, *_: grads.append({names[p]: p.grad.clone() for g in opt.param_groups for p in g["params"]
                                      if p.grad is not None}))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batch = _one_global_batch()
    net = model
    if ddp_rank is not None:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=ddp_rank, world_size=2)
        net = DistributedDataParallel(model)  # find_unused_parameters=False
        batch = {k: v[4 * ddp_rank: 4 * ddp_rank + 4] for k, v in batch.items()}
    for _ in range(steps):
        train_step(net, batch, optimizer, scaler, device=torch.device("cpu"), amp="none", quality_lambda=0.03,
                   input_size=(128, 96), grad_clip=1.0)
    if ddp_rank is not None:
        dist.destroy_process_group()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, grads


def _ddp_worker(rank, init_file, out_file):
    result = _stepped_model(rank, init_file)
    if rank == 0:
        torch.save(result, out_file)


@pytest.mark.slow
def test_two_process_gloo_ddp_steps_match_a_single_process(tmp_path, one_thread):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "pg"), str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    ddp, ddp_grads = torch.load(tmp_path / "ddp.pt")
    single, single_grads = _stepped_model()
    torch.manual_seed(0)
    initial = create_model("sharpose_small_256x192", **TINY).state_dict()
    # The gradients of the first step: DDP averages two 4-sample means, one process takes the 8-sample
    # mean; other summation orders of the same network (its longest reduction: the patch embedding's
    # 3 * 16 * 16 terms), relative to each gradient's magnitude.
    rel = network_rel_tolerance(3 * 16 * 16)
    assert ddp_grads[0].keys() == single_grads[0].keys() and len(ddp_grads) == len(single_grads) == STEPS
    for name, grad in single_grads[0].items():
        assert_rel_close(ddp_grads[0][name], grad, rel, f"d({name})")
    # The parameters are not compared: Adam moves a weight by about lr whatever the gradient's size
    # (|m| / sqrt(v) <= 1), so a gradient within rounding of zero may move it either way, and the
    # bound would be the size of the step itself. Both runs did step every parameter.
    for key, value in single.items():
        assert not torch.equal(value, initial[key]), key
        assert not torch.equal(ddp[key], initial[key]), key


@pytest.mark.slow
def test_torchrun_training_with_two_processes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sharpose.train", "tiny", "--no-progress",
           "--set", f"data.root={COCO_MINI}", "--set", f"output_dir={tmp_path}",
           "--set", "model.overrides.backend=reference", "--set", "train.epochs=2", "--set", "train.batch_size=3",
           "--set", "train.log_interval=1", "--set", "train.eval_interval=2", "--set", "eval.flip_test=false"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["iterations"] == 4  # 12 samples / 2 processes / 3 per batch = 2 per epoch
    log = read_log(tmp_path / "log.jsonl")
    assert [r["mode"] for r in log] == ["train"] * 4 + ["val"]
    assert log[-1]["AP"] >= 0.0
    assert (tmp_path / "best.pth").is_file()


# --- a tiny model learns ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_tiny_model_learns_coco_mini(tmp_path, one_thread, capsys):
    config = tiny_config(tmp_path, "eval.sweep_thresholds=[]")  # the shipped recipe as it is
    seed_everything(config.seed)
    initial = build_model(config)  # the weights training starts from
    ctx = DistContext(0, 1, torch.device("cpu"), owns_group=False)
    ap_before = evaluate_model(initial, build_val_dataset(config), config, ctx, sweep=False)["metrics"]["AP"]

    start = time.perf_counter()
    summary = train(config, progress=False)
    seconds = time.perf_counter() - start
    ap_after = evaluate(config, tmp_path / "latest.pth", output_dir=tmp_path / "eval", progress=False)["metrics"]["AP"]
    losses = [r["loss"] for r in read_log(tmp_path / "log.jsonl") if r["mode"] == "train"]
    with capsys.disabled():
        print(f"\ntiny SHaRPose on coco-mini: {summary['iterations']} steps in {seconds:.1f} s; "
              f"loss (mean of 10 steps) first {losses[0]:.4f} last {losses[-1]:.4f}; "
              f"AP before {ap_before:.4f} after {ap_after:.4f}")
    assert summary["iterations"] == 400
    assert losses[-1] < 0.3 * losses[0]
    assert ap_after > ap_before + 0.2
