"""Loading checkpoints: released SHaRPose / ViTPose (mmpose layout), HF transformers' VitPose (safetensors or
a state dict) and this project's own, strictly, with errors that carry their details; atomic saving."""
from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

FORMAT = "sharpose-triton/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose weights do not fit the model."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint whose weights do not fit the model; the details are attributes, so that callers
    (the command line) can word them their own way.

    missing: model keys the checkpoint lacks; unexpected: checkpoint keys the model lacks; mis_shaped:
    (key, checkpoint shape, model shape); saved_arch: the `arch` the checkpoint was saved with (this
    project's format); likely_model: else the named model whose weights have the checkpoint's names and
    shapes, if one does; notes: what else explains the misfit.
    """

    def __init__(self, source: str, model_name: str, missing: list[str], unexpected: list[str],
                 mis_shaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
                 saved_arch: dict[str, Any] | None = None, likely_model: str | None = None,
                 notes: tuple[str, ...] = ()) -> None:
        self.source, self.model_name = source, model_name
        self.missing, self.unexpected, self.mis_shaped = missing, unexpected, mis_shaped
        self.saved_arch, self.likely_model, self.notes = saved_arch, likely_model, notes
        super().__init__(self.report())

    def problems(self) -> dict[str, list[str]]:
        """{'missing' | 'unexpected' | 'mis-shaped': key descriptions}, the empty kinds left out."""
        shaped = [f"{k}: checkpoint {a} vs model {b}" for k, a, b in self.mis_shaped]
        kinds = {"missing": self.missing, "unexpected": self.unexpected, "mis-shaped": shaped}
        return {kind: keys for kind, keys in kinds.items() if keys}

    def summary(self) -> str:
        """One line: '169 mis-shaped keys (e.g. ...), 2 missing keys (e.g. ...)'."""
        return ", ".join(f"{len(keys)} {kind} keys (e.g. {keys[0]})" for kind, keys in self.problems().items())

    def one_line(self) -> str:
        """The mismatch in one line, for a command's error message."""
        origin = (f"; it was saved from {describe_arch(self.saved_arch)}" if self.saved_arch
                  else f"; it fits {self.likely_model}" if self.likely_model else "")
        notes = "".join(f"; {note}" for note in self.notes)
        return f"{self.source} does not fit the model {self.model_name}: {self.summary()}{origin}{notes}"

    def report(self) -> str:
        lines = [f"{self.source} does not fit the model {self.model_name}"]
        if self.saved_arch:
            lines.append(f"  the checkpoint was saved from {describe_arch(self.saved_arch)}")
        elif self.likely_model:
            lines.append(f"  the checkpoint fits the named model {self.likely_model}")
        for kind, keys in self.problems().items():
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")
            lines.append(f"  {len(keys)} {kind} key(s): {shown}")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


def save_checkpoint(model: nn.Module, path: str | os.PathLike, **extra: Any) -> None:
    """Write `model`'s weights (plus `extra` entries) in this project's format, atomically:
    a crash mid-write leaves any previous file at `path` intact."""
    path = Path(path)
    payload = {"format": FORMAT, "arch": getattr(model, "arch", None), "model": model.state_dict(), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would ignore the user's umask
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


TEMP_SUFFIX = ".tmp"  # save_checkpoint writes .NAME.XXXX.tmp beside NAME, then renames it


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporary files that saves killed mid-write left in `folder`; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.glob(f".*.pth.*{TEMP_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a PyTorch checkpoint (with `weights_only=True`: no code runs) or a safetensors file, with errors
    that name the file and say what it holds instead."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if is_safetensors(path):
        return {name: t.to(map_location) for name, t in read_safetensors(path).items()}
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message suggests weights_only=False, i.e. running the file's code: never pass that on
        raise CheckpointError(f"cannot read checkpoint {path}: it is not a PyTorch checkpoint of tensors and "
                              "plain values (it holds other Python objects, which are not loaded since "
                              "unpickling them could run code)") from e
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint or safetensors file, "
                              "or truncated (an interrupted download or copy?)") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of weights")
    return obj


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with the little-endian length of its JSON header, then '{'."""
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (the format's header and byte layout; no extra package needed)."""
    data = path.read_bytes()
    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
        body = memoryview(data)[8 + size :]
        tensors = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            raw = bytearray(body[begin:end])
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            tensors[name] = flat.reshape(entry["shape"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"cannot read safetensors file {path}: corrupt or truncated ({e})") from e
    return tensors


# HF transformers' VitPoseForPoseEstimation names -> the released ViTPose (mmpose) names, which the model's
# released_key_map then reads; HF splits the fused qkv projection into query/key/value (fused back below)
HF_KEY_MAP = (
    (r"^backbone\.embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
    (r"^backbone\.embeddings\.position_embeddings$", "backbone.pos_embed"),
    (r"^backbone\.layernorm\.", "backbone.last_norm."),
    (r"^backbone\.encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"backbone.blocks.\1.attn.proj."),
    (r"^backbone\.encoder\.layer\.(\d+)\.layernorm_before\.", r"backbone.blocks.\1.norm1."),
    (r"^backbone\.encoder\.layer\.(\d+)\.layernorm_after\.", r"backbone.blocks.\1.norm2."),
    (r"^backbone\.encoder\.layer\.(\d+)\.mlp\.", r"backbone.blocks.\1.mlp."),
    (r"^head\.deconv1\.", "keypoint_head.deconv_layers.0."),
    (r"^head\.batchnorm1\.", "keypoint_head.deconv_layers.1."),
    (r"^head\.deconv2\.", "keypoint_head.deconv_layers.3."),
    (r"^head\.batchnorm2\.", "keypoint_head.deconv_layers.4."),
    (r"^head\.conv\.", "keypoint_head.final_layer."),  # the classic decoder's 1x1 conv, the simple one's 3x3
)
HF_QKV = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")
# where HF's VitPoseBackboneConfig defaults differ from the released ViTPose
HF_DEFAULTS_NOTE = ("HF transformers layout: HF's VitPoseBackboneConfig defaults differ from ViTPose's "
                    "(layer_norm_eps 1e-12 vs 1e-6; out_indices None, ViTPose reads the last layer); check the "
                    "config.json saved with the weights (hidden_size, num_hidden_layers, use_simple_decoder)")


def is_hf_layout(state: dict[str, Any]) -> bool:
    return any(k.startswith("backbone.embeddings.") for k in state)


def hf_to_released(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF VitPoseForPoseEstimation weights under the released ViTPose names (query, key, value fused into qkv)."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = HF_QKV.match(key)
        if match:
            layer, which, kind = match.groups()
            parts.setdefault((layer, kind), {})[which] = value
        else:
            out[rename_key(key, HF_KEY_MAP)] = value
    for (layer, kind), qkv in parts.items():
        if len(qkv) == 3:
            out[f"backbone.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([qkv["query"], qkv["key"], qkv["value"]])
        else:  # left under HF's names: reported as unexpected keys
            out.update({f"backbone.encoder.layer.{layer}.attention.attention.{w}.{kind}": v for w, v in qkv.items()})
    return out


def check_hf_config(path: Path, model: nn.Module) -> None:
    """With HF weights, the config.json saved beside them must describe the released ViTPose computation
    (the weights alone do not show the LayerNorm eps or which layer feeds the decoder)."""
    config_file = path.parent / "config.json"
    if not config_file.is_file():
        return
    try:
        backbone = json.loads(config_file.read_text(encoding="utf-8")).get("backbone_config") or {}
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"cannot read {config_file} (the HF config saved with {path}): {e}") from e
    eps, depth = getattr(getattr(model, "norm", None), "eps", None), len(getattr(model, "blocks", ()))
    problems = []
    if eps is not None and backbone.get("layer_norm_eps", eps) != eps:
        problems.append(f"layer_norm_eps {backbone['layer_norm_eps']} (HF's default 1e-12; ViTPose uses {eps})")
    out_indices = backbone.get("out_indices")
    if out_indices not in (None, [depth], [-1]):
        problems.append(f"out_indices {out_indices} (ViTPose decodes the last layer: [{depth}])")
    if problems:
        raise CheckpointError(f"{config_file} (the HF config of {path}) does not describe ViTPose: "
                              f"{'; '.join(problems)}")


def model_state(model: nn.Module, checkpoint: dict[str, Any], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model's weights from a checkpoint in any supported layout, renamed to the model's names."""
    if checkpoint.get("format") == FORMAT:
        return checkpoint["model"]
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{source} is not a recognised checkpoint: expected this project's format, an mmpose "
            f"checkpoint with 'state_dict', HF transformers VitPose weights or a plain state dict; "
            f"found keys {sorted(map(str, checkpoint))[:8]}"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if is_hf_layout(state):
        state = hf_to_released(state)
    rules = getattr(model, "released_key_map", ())
    if any(k.startswith(("backbone.", "keypoint_head.")) for k in state):
        state = {rename_key(k, rules): v for k, v in state.items()}
    return state


def rename_key(key: str, rules: tuple[tuple[str, str], ...]) -> str:
    """Apply the first matching (pattern, replacement) rule; keys no rule matches are kept."""
    for pattern, replacement in rules:
        renamed, count = re.subn(pattern, replacement, key, count=1)
        if count:
            return renamed
    return key


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load weights into `model` strictly; returns the whole checkpoint (for its other entries).

    Accepts the released SHaRPose and ViTPose (mmpose layout) checkpoints, HF transformers'
    VitPoseForPoseEstimation weights (safetensors or a state dict; with their config.json beside them it
    is checked too) and this project's own. Any missing, unexpected or mis-shaped key raises a
    CheckpointMismatch listing them.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, map_location)
    hf = checkpoint.get("format") != FORMAT and is_hf_layout(checkpoint.get("state_dict", checkpoint))
    if hf:
        check_hf_config(path, model)
    state = model_state(model, checkpoint, source=f"checkpoint {path}")
    check_state_fits(model, state, source=f"checkpoint {path}", arch=checkpoint.get("arch"),
                     notes=(HF_DEFAULTS_NOTE,) if hf else ())
    model.load_state_dict(state)
    return checkpoint


def describe_arch(arch: dict[str, Any] | None) -> str:
    if not arch:
        return ""
    overrides = ", ".join(f"{k}={v!r}" for k, v in arch["overrides"].items())
    return f"{arch['name']}({overrides})"


def check_state_fits(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                     arch: dict[str, Any] | None = None, notes: tuple[str, ...] = ()) -> None:
    """Raise CheckpointMismatch unless `state` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [(k, tuple(state[k].shape), tuple(v.shape))
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mis_shaped:
        name = describe_arch(getattr(model, "arch", None)) or type(model).__name__
        likely = None if arch else likely_model(state)
        raise CheckpointMismatch(source, name, missing, unexpected, mis_shaped, saved_arch=arch,
                                 likely_model=likely, notes=notes)


def likely_model(state: dict[str, torch.Tensor]) -> str | None:
    """The named model whose weights have exactly the names and shapes of `state`, or None. Each candidate
    is built with one block (cheap); the blocks are compared through the first one and their count."""
    from sharpose.models import create_model
    from sharpose.models.factory import MODEL_CONFIGS

    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    shapes = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("blocks.") or k.startswith("blocks.0.")}
    for name, (_, config) in MODEL_CONFIGS.items():
        if config.get("depth") != depth:
            continue
        candidate = create_model(name, depth=1).state_dict()
        if {k: tuple(v.shape) for k, v in candidate.items()} == shapes:
            return name
    return None
