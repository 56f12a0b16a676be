"""Training and evaluation settings: YAML files parsed into typed dataclasses.

A config is looked up by name among the files shipped in `sharpose/configs/` (e.g. "sharpose_base_256x192")
or read from a path. Every key is checked against the dataclasses below: an unknown key, a value of the
wrong type or a missing required key raises ConfigError naming the key and the file. `overrides` of the
form "train.lr=1e-4" are applied before the check; their values are read as YAML ("null", "[1, 2]", ...).

Relative paths in `data` are taken relative to `data.root`, and `data.root` relative to the current
directory.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sharpose.data import Augmentation

CONFIG_DIR = Path(__file__).parent.parent / "configs"


class ConfigError(ValueError):
    """A config that cannot be used: unknown key, wrong type, missing file; the message names the key."""


@dataclass
class ModelConfig:
    name: str  # a `sharpose.list_models()` name
    overrides: dict[str, Any] = field(default_factory=dict)  # keyword arguments of `create_model`


@dataclass
class DataConfig:
    train_ann: str
    train_images: str
    val_ann: str
    val_images: str
    dataset: Literal["coco", "mpii"] = "coco"
    root: str = ""
    input_size: tuple[int, int] = (256, 192)  # (H, W), must equal the model's
    sigma: float = 2.0  # target Gaussian std in heatmap pixels
    workers: int = 4  # DataLoader workers per process
    augmentation: Augmentation | None = field(default_factory=Augmentation)  # null: no augmentation
    head_boxes_file: str | None = None  # MPII: JSON list of [x1, y1, x2, y2] head boxes, one per val entry


@dataclass
class TrainConfig:
    batch_size: int = 64  # per process
    epochs: int = 210
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.1
    layer_decay: float = 0.75
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    lr_steps: list[int] = field(default_factory=lambda: [170, 200])  # epochs at which lr *= lr_gamma
    lr_gamma: float = 0.1
    grad_clip: float | None = None  # max L2 norm of all gradients, None: no clipping
    # mixed precision for GPUs; on a CPU without bf16 instructions (AVX2 only) bf16 is slower than fp32
    # (ViTPose's deconvolution head 10-60x, bench/RESULTS.md)
    amp: Literal["none", "fp16", "bf16"] = "none"
    quality_lambda: float = 0.03  # weight of the quality-predictor loss (SHaRPose)
    quality_start_epoch: int = 180  # 0-based epoch from which that weight applies (0 before)
    init_checkpoint: str | None = None  # MAE / ViTPose / SHaRPose weights to start from
    log_interval: int = 50  # iterations per JSON-lines record
    eval_interval: int = 10  # epochs between evaluations (and at the last epoch); 0: never
    checkpoint_interval: int = 0  # iterations between saves of latest.pth; 0: every epoch end (the run's end always)
    max_iters: int | None = None  # stop (and save latest.pth) after this many iterations in total


@dataclass
class EvalConfig:
    batch_size: int = 64
    flip_test: bool = True
    use_gt_bbox: bool = False
    bbox_file: str | None = None  # COCO person detections, needed when use_gt_bbox is false
    det_bbox_thr: float = 0.0
    blur_kernel: int = 11  # DARK-UDP modulation kernel: 11 for sigma 2, 17 for sigma 3
    qp_threshold: float | None = None  # SHaRPose early-exit threshold; None: the model's own
    sweep_thresholds: list[float] = field(default_factory=list)  # SHaRPose Q_thres sweep (Figure 6)
    nms_thr: float = 0.9  # OKS-NMS threshold
    vis_thr: float = 0.2  # keypoint score threshold of the rescoring


@dataclass
class Config:
    model: ModelConfig
    data: DataConfig
    output_dir: str
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    source: str = field(default="", metadata={"internal": True})  # the file it was read from

    def data_path(self, value: str) -> Path:
        return Path(self.data.root) / value

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for checkpoints and the run's config.yaml); `Config.from_dict` reads it back."""
        out = dataclasses.asdict(self)
        del out["source"]
        return out

    @classmethod
    def from_dict(cls, raw: Any, source: str = "<dict>") -> Config:
        config = _convert(raw, cls, "", source)
        config.source = source
        _validate(config)
        return config


def list_configs() -> list[str]:
    """Names of the configs shipped with the package."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """A shipped config by name, or a YAML file by path, with "key.sub=value" overrides applied."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = CONFIG_DIR / f"{name_or_path}.yaml"
        if not shipped.is_file():
            raise ConfigError(
                f"no config file {name_or_path!r}, and no shipped config of that name; "
                f"shipped: {', '.join(list_configs())}"
            )
        path = shipped
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a YAML mapping, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item, str(path))
    return Config.from_dict(raw, source=str(path))


def apply_override(raw: dict[str, Any], item: str, source: str) -> None:
    """Set a dotted key of the raw mapping from "a.b.c=value" (value parsed as YAML)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not valid YAML: {err}") from err
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: override {item!r}: {'.'.join(parents[: i + 1])} is not a section")
    node[leaf] = value


def check_files(config: Config, *, training: bool) -> None:
    """Raise ConfigError naming the key when a file the run needs is missing."""
    needed: list[tuple[str, Path | None, bool]] = []  # (key, path, is_dir)
    if training:
        needed += [("data.train_ann", config.data_path(config.data.train_ann), False),
                   ("data.train_images", config.data_path(config.data.train_images), True)]
        if config.train.init_checkpoint:
            needed.append(("train.init_checkpoint", Path(config.train.init_checkpoint), False))
    if not training or config.train.eval_interval > 0:
        needed += [("data.val_ann", config.data_path(config.data.val_ann), False),
                   ("data.val_images", config.data_path(config.data.val_images), True)]
        if not config.eval.use_gt_bbox and config.data.dataset == "coco":
            bbox_file = config.eval.bbox_file
            needed.append(("eval.bbox_file", None if bbox_file is None else config.data_path(bbox_file), False))
        if config.data.head_boxes_file:
            needed.append(("data.head_boxes_file", config.data_path(config.data.head_boxes_file), False))
        elif config.data.dataset == "mpii":
            raise ConfigError(
                f"{config.source}: data.head_boxes_file is not set: MPII's PCKh divides each error by the "
                "person's head size, which the annotation json does not hold; give a JSON list of [x1, y1, x2, "
                "y2] head boxes, one per val entry (MPII's mpii_gt_val.mat, 'headboxes_src')"
                + (", or train without evaluation: train.eval_interval=0" if training else ""))
    for key, path, is_dir in needed:
        if path is None:
            raise ConfigError(f"{config.source}: {key} is not set (eval.use_gt_bbox is false: detections needed)")
        if not (path.is_dir() if is_dir else path.is_file()):
            what = "directory" if is_dir else "file"
            raise ConfigError(f"{config.source}: {key}: no such {what}: {path}")


def _validate(config: Config) -> None:
    """Value checks the types alone do not express."""
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{config.source}: {key}: {message}")

    t = config.train
    minimum = {"train.batch_size": (t.batch_size, 1), "eval.batch_size": (config.eval.batch_size, 1),
               "train.epochs": (t.epochs, 1), "train.log_interval": (t.log_interval, 1),
               "train.max_iters": (1 if t.max_iters is None else t.max_iters, 1),
               "train.warmup_iters": (t.warmup_iters, 0), "train.eval_interval": (t.eval_interval, 0),
               "train.checkpoint_interval": (t.checkpoint_interval, 0), "data.workers": (config.data.workers, 0)}
    for key, (value, low) in minimum.items():
        if value < low:
            fail(key, f"must be >= {low}, got {value}")
    if config.eval.blur_kernel < 1 or config.eval.blur_kernel % 2 == 0:
        fail("eval.blur_kernel", f"must be an odd positive size, got {config.eval.blur_kernel}")
    if t.lr_steps != sorted(t.lr_steps):
        fail("train.lr_steps", f"must be increasing, got {t.lr_steps}")
    if any(math.isnan(t) for t in config.eval.sweep_thresholds):
        fail("eval.sweep_thresholds", "NaN is not a threshold")


def _convert(value: Any, kind: Any, key: str, source: str) -> Any:
    """`value` checked against the type annotation `kind`; ConfigError names `key` otherwise."""
    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{source}: {key or 'config'}: expected {expected}, got {type(value).__name__} {value!r}")

    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            fail(f"a mapping of {kind.__name__} settings")
        fields = {f.name: f for f in dataclasses.fields(kind) if not f.metadata.get("internal")}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            name = f"{key}.{unknown[0]}" if key else unknown[0]
            raise ConfigError(f"{source}: unknown key {name!r}; {key or 'the top level'} accepts: {', '.join(fields)}")
        hints = typing.get_type_hints(kind)
        converted = {}
        for name, f in fields.items():
            sub = f"{key}.{name}" if key else name
            if name in value:
                converted[name] = _convert(value[name], hints[name], sub, source)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: missing required key {sub!r}")
        return kind(**converted)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(value, option, key, source)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        fail(" or ".join(getattr(o, "__name__", str(o)) for o in options) + (" or null" if type(None) in args else ""))
    if origin is Literal:
        if value not in args:
            fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail(f"a list of {args[0].__name__}")
        if origin is tuple and len(value) != len(args):
            fail(f"a list of {len(args)} values")
        items = args if origin is tuple else [args[0]] * len(value)
        converted = [_convert(v, t, f"{key}[{i}]", source) for i, (v, t) in enumerate(zip(value, items))]
        return tuple(converted) if origin is tuple else converted
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            fail("a mapping")
        return dict(value)
    if kind is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if kind is float:
        # YAML 1.1 reads "5e-4" (no dot) as a string: accept numeric strings for float keys
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                fail("a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    if kind is Any:
        return value
    raise TypeError(f"config type {kind!r} of {key} is not supported")


def dump_config(config: Config, path: str | Path) -> None:
    """Write the config as YAML (what a run actually used, overrides included)."""
    Path(path).write_text(yaml.safe_dump(_plain(config.to_dict()), sort_keys=False))


def _plain(value: Any) -> Any:
    # tuples -> lists, so that the YAML stays plain
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

