"""The `sharpose` command (also `python -m sharpose`): demo, export, flops, and train / eval / bench.

Errors a user can fix (a missing or unreadable file, a bad argument, an unknown model, a checkpoint of
another architecture, an unwritable output) end in one line `sharpose: error: ...` and exit code 1
(2 for a malformed command line); `--debug` also prints the traceback.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import json
import math
import os
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import cv2
import torch
import torch.nn as nn

EXAMPLES = """\
examples:
  sharpose demo tests/data/coco-mini/images/000000196141.jpg --bbox 247.8,74.2,169.7,300.8 --out pose.png
  sharpose demo IMAGE --det-file detections.json --checkpoint sharpose_base_256x192.pth
  sharpose export --model sharpose_base_256x192 --format onnx --out sharpose.onnx
  sharpose flops --model sharpose_base_256x192
  sharpose train sharpose_base_256x192            (arguments go to python -m sharpose.train)
  sharpose eval sharpose_base_256x192 CHECKPOINT  (arguments go to python -m sharpose.evaluate)
  sharpose bench --help                           (arguments go to python -m sharpose.benchmark)"""

# subcommands handled by another module's main(argv): name -> (module, one-line help)
FORWARDED = {
    "train": ("sharpose.train", "train a model from a config (arguments of python -m sharpose.train)"),
    "eval": ("sharpose.evaluate", "evaluate a checkpoint on COCO / MPII (arguments of python -m sharpose.evaluate)"),
    "bench": ("sharpose.benchmark", "SHaRPose vs ViTPose throughput (arguments of python -m sharpose.benchmark)"),
}
DEFAULT_MODEL = "sharpose_base_256x192"


class CliError(Exception):
    """A one-line message saying what is wrong and how to fix it."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors in the `sharpose: error:` format."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"sharpose: error: {message} (see '{self.prog} --help')\n")


# ---------------------------------------------------------------------------------------------------
# argument types
# ---------------------------------------------------------------------------------------------------

def bbox_arg(text: str) -> tuple[float, float, float, float]:
    """'x,y,w,h' in image pixels."""
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or not all(map(math.isfinite, box)) or box[2] <= 0 or box[3] <= 0:
        raise argparse.ArgumentTypeError(
            f"bad box {text!r}: expected x,y,w,h (four numbers in image pixels, w and h > 0), "
            "e.g. 247.8,74.2,169.7,300.8"
        )
    return box  # type: ignore[return-value]


def threshold_arg(text: str) -> float:
    """An early-exit threshold: a number, -inf (every crop exits) or inf (every crop is refined); not NaN,
    which no quality compares with."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"expected a number (or -inf: every crop exits, inf: every crop is "
                                         f"refined), got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def model_arg(name: str) -> str:
    from sharpose.models import list_models

    names = list_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise argparse.ArgumentTypeError(f"unknown model {name!r}; {hint}available: {', '.join(names)}")
    return name


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text} {what}; check the path")
    return path


def override_arg(text: str) -> tuple[str, Any]:
    """'KEY=VALUE'; VALUE as a Python literal (2, 0.5, (256, 192), True) or else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"bad override {text!r}: expected KEY=VALUE, e.g. depth=2")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


# ---------------------------------------------------------------------------------------------------
# shared steps
# ---------------------------------------------------------------------------------------------------

def prepare_output(path: Path, option: str, suffix: str | None = None) -> Path:
    """Check that `path` can be written (creating its folder) before any slow work starts."""
    if suffix is not None and path.suffix.lower() != suffix:
        raise CliError(f"{option} {path} must be a {suffix} file, e.g. {path.with_suffix(suffix)}")
    if path.is_dir():
        raise CliError(f"{option} {path} is a directory; give a file name, e.g. {path / ('out' + (suffix or ''))}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"cannot write {option} {path}: cannot create folder {path.parent} ({err.strerror}); "
                       f"choose another {option}") from err
    if not os.access(path.parent, os.W_OK):
        raise CliError(f"cannot write {option} {path}: folder {path.parent} is not writable; choose another {option}")
    return path


def load_model(name: str, overrides: Sequence[tuple[str, Any]], checkpoint: Path | None) -> nn.Module:
    """The named model (with `--set` overrides) and, when given, the checkpoint's weights."""
    from sharpose.models import create_model

    try:
        model = create_model(name, **dict(overrides))
    except (TypeError, ValueError) as err:  # an override the model does not take, or a bad value
        raise CliError(f"--set: {one_line(err)}") from err
    if checkpoint is None:
        print("sharpose: note: no --checkpoint given: the model has random weights", file=sys.stderr)
    else:
        load_weights(model, checkpoint, name)
    return model


def load_weights(model: nn.Module, path: Path, name: str) -> None:
    from sharpose.checkpoint import CheckpointMismatch, load_checkpoint

    try:
        load_checkpoint(model, path)
    except CheckpointMismatch as err:
        notes = "".join(f"; {note}" for note in err.notes)
        raise CliError(f"checkpoint {path} does not fit {name}: {err.summary()}; "
                       f"{arch_hint(err.saved_arch, err.likely_model)}{notes}") from err


def arch_hint(arch: dict[str, Any] | None, likely_model: str | None = None) -> str:
    """How to build the model a checkpoint was saved from (or that it fits), as command-line options."""
    if not arch and likely_model:
        return f"it fits {likely_model}: pass --model {likely_model}"
    if not arch:
        return "was it saved from another model? pass the matching --model"
    sets = "".join(f" --set {shlex.quote(f'{k}={v!r}')}" for k, v in arch["overrides"].items())
    return f"it was saved from {arch['name']}: pass --model {arch['name']}{sets}"


def write_png(path: Path, picture: Any) -> None:
    if not cv2.imwrite(str(path), picture):
        raise CliError(f"cannot write {path}; choose another --out")


def device_arg(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise argparse.ArgumentTypeError(f"bad device {text!r}: expected cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("no CUDA device here; use --device cpu")
    return device


# ---------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------

def person_boxes(args: argparse.Namespace, image_shape: Sequence[int], image_id: int | None) -> tuple[list, list]:
    """(boxes, box scores): --bbox, the --det-file detections of this image, or the whole image."""
    from sharpose.demo import load_detections

    if args.bbox:
        height, width = image_shape[:2]
        for x, y, w, h in args.bbox:
            if x >= width or y >= height or x + w <= 0 or y + h <= 0:
                raise CliError(f"--bbox {x:g},{y:g},{w:g},{h:g} lies entirely outside {args.image} "
                               f"({width}x{height} pixels); give x,y,w,h in image pixels")
        return list(args.bbox), [1.0] * len(args.bbox)
    if args.det_file is None:
        return [(0.0, 0.0, float(image_shape[1]), float(image_shape[0]))], [1.0]
    if image_id is None:
        raise CliError(f"cannot tell which detections of {args.det_file} belong to {args.image}: its name is not "
                       "a COCO image id; pass --image-id")
    boxes, scores = load_detections(args.det_file, image_id, args.det_score_thr)
    if not boxes:
        raise CliError(f"{args.det_file} has no person detection of image {image_id} with score >= "
                       f"{args.det_score_thr}; lower --det-score-thr or pass --bbox")
    return boxes, scores


def missing_folders(path: Path) -> list[Path]:
    """The folders above `path` that do not exist yet, deepest first."""
    return [p for p in path.parents if not p.exists()]


def remove_if_empty(folders: Sequence[Path]) -> None:
    """Remove each of `folders` (deepest first) that is empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty, or already gone
            continue


def person_pictures(out: Path) -> list[Path]:
    """The per-person pictures a demo run wrote beside `out` (OUT_person{i}.png)."""
    prefix = f"{out.stem}_person"
    return [p for p in out.parent.glob(f"{prefix}*{out.suffix}") if p.stem[len(prefix):].isdigit()]


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo; when it fails, the output folders it created are removed again."""
    out = args.out or Path(f"{args.image.stem}_pose.png")
    new_folders = missing_folders(out) + missing_folders(args.json or out)
    try:
        return run_demo(args, out)
    except BaseException:
        remove_if_empty(sorted(set(new_folders), key=lambda p: -len(p.parts)))  # a failed demo leaves nothing
        raise


def run_demo(args: argparse.Namespace, out: Path) -> int:
    from sharpose.data import read_image
    from sharpose.demo import coco_result, image_id_from_name, predict_people
    from sharpose.evaluation import write_coco_results
    from sharpose.visualize import person_figure, scene_figure

    out = prepare_output(out, "--out", ".png")
    json_path = prepare_output(args.json or out.with_suffix(".json"), "--json", ".json")
    image = read_image(args.image)
    image_id = args.image_id if args.image_id is not None else image_id_from_name(args.image)
    boxes, box_scores = person_boxes(args, image.shape, image_id)
    model = load_model(args.model, args.overrides, args.checkpoint).to(args.device)
    if args.qp_threshold is not None and not model.has_early_exit:
        raise CliError(f"--qp-threshold applies to SHaRPose models; {args.model} has no early exit")
    with model.exit_policy(qp_threshold=args.qp_threshold):
        people = predict_people(model, image, boxes, box_scores, args.device)
    grid = model.score_grid
    for stale in person_pictures(out):  # an earlier run's pictures of more people
        stale.unlink()
    written = [out]
    write_png(out, scene_figure(image, people, args.kpt_thr))
    for i, person in enumerate(people):
        path = out.with_name(f"{out.stem}_person{i}{out.suffix}")
        write_png(path, person_figure(i, person, grid, args.kpt_thr))
        written.append(path)
    results = [coco_result(person, image_id) for person in people]
    write_coco_results(results, json_path)
    print(json.dumps(results))
    print(f"sharpose: wrote {', '.join(map(str, written + [json_path]))}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------------
# export, flops, forwarded commands
# ---------------------------------------------------------------------------------------------------

def cmd_export(args: argparse.Namespace) -> int:
    from sharpose.export import FORMATS, check_onnx_available, example_images, export, exportable, verify

    out = prepare_output(args.out or Path(f"{args.model}{FORMATS[args.format]}"), "--out")
    if args.format == "onnx":
        check_onnx_available()
    wrapped = exportable(load_model(args.model, args.overrides, args.checkpoint))
    export(wrapped, example_images(wrapped.model, args.batch_size, seed=0), args.format, out)
    check = verify(wrapped, args.format, out, example_images(wrapped.model, args.batch_size, seed=1))
    for name, diff in zip(check.names, check.max_abs_diff):
        print(f"{name}: max |exported - eager| = {diff:.3g}")
    name, worst = check.worst()
    if worst > args.atol:
        raise CliError(f"the exported model's {name!r} differs from the eager model's by {worst:.3g} "
                       f"(> --atol {args.atol:g}); {out} is not faithful")
    print(f"wrote {out} ({args.format}, batch size {args.batch_size}); outputs: {', '.join(check.names)}")
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    from sharpose.flops.table import flops_report

    print(flops_report(args.models))
    return 0


def run_forwarded(command: str, argv: list[str]) -> int:
    """Hand `argv` to the main(argv) of the module behind `command`."""
    module_name = FORWARDED[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        module = None
    entry: Callable[[list[str]], int | None] | None = getattr(module, "main", None)
    if entry is None:
        raise CliError(f"'sharpose {command}' is not available in this version: {module_name} has no main(argv)")
    code = entry(argv)
    return 0 if code is None else int(code)


# ---------------------------------------------------------------------------------------------------
# parser and entry point
# ---------------------------------------------------------------------------------------------------

def add_model_args(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument("--model", type=model_arg, default=default, required=default is None,
                        help="named model, see sharpose.list_models()" + (f" (default: {default})" if default else ""))
    parser.add_argument("--checkpoint", type=existing_file, metavar="PATH",
                        help="weights: this project's checkpoint or a released SHaRPose / ViTPose one "
                             "(default: random weights)")
    parser.add_argument("--set", dest="overrides", type=override_arg, action="append", default=[],
                        metavar="KEY=VALUE", help="override a model setting, e.g. --set alpha=0.3 (repeatable)")


def build_demo_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo", parents=[common], help="keypoints, keypoint attention and refined patches of the people in an image",
        description="Top-down pose estimation of each person box of IMAGE (the whole image when no box is given): "
        "box -> centre/scale with padding 1.25, UDP crop, one forward pass, UDP + DARK decoding. Writes OUT.png "
        "(the image with every skeleton, box and, for SHaRPose, the predicted quality Q and whether the fine stage "
        "ran), OUT_person{i}.png per person (the crop with its skeleton; SHaRPose adds the keypoint-attention map "
        "of the coarse patches and the patches chosen for high resolution, as the paper's Figure 5) and the "
        "keypoints as COCO results JSON (also printed on stdout).")
    p.add_argument("image", type=existing_file, metavar="IMAGE", help="image file (JPEG, PNG, ...)")
    boxes = p.add_mutually_exclusive_group()
    boxes.add_argument("--bbox", type=bbox_arg, action="append", metavar="X,Y,W,H",
                       help="a person box in image pixels (repeatable; write --bbox=-4,... when X is negative)")
    boxes.add_argument("--det-file", type=existing_file, metavar="F",
                       help="COCO-style detection results (JSON list of {image_id, bbox, score}); the boxes of this "
                            "image are used; a non-finite score is an error (as in evaluation)")
    p.add_argument("--det-score-thr", type=float, default=0.3, metavar="S",
                   help="keep detections with score >= S (default: 0.3)")
    p.add_argument("--image-id", type=int, help="COCO image id of IMAGE, for --det-file and the JSON "
                                                "(default: from a COCO file name such as 000000196141.jpg)")
    add_model_args(p, DEFAULT_MODEL)
    p.add_argument("--out", type=Path, metavar="OUT.png",
                   help="scene picture; person pictures go beside it as OUT_person{i}.png (default: IMAGE_pose.png)")
    p.add_argument("--json", type=Path, metavar="OUT.json", help="COCO results file (default: OUT.json)")
    p.add_argument("--qp-threshold", type=threshold_arg, metavar="Q",
                   help="SHaRPose's early-exit threshold: quality >= Q skips the fine stage "
                        "(default: the model's: 0.99, or 1.2 for sharpose_base_384x288, as released)")
    p.add_argument("--kpt-thr", type=float, default=0.3, help="draw keypoints with score >= this (default: 0.3)")
    p.add_argument("--device", type=device_arg, default=torch.device("cuda" if torch.cuda.is_available() else "cpu"),
                   help="cpu, cuda or cuda:N (default: cuda when there is one)")
    p.set_defaults(run=cmd_demo)


def build_export_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    from sharpose.export import FORMATS
    from sharpose.models import SHaRPose

    p = sub.add_parser(
        "export", parents=[common], help="export a model to ONNX, TorchScript or a torch.export program",
        description="Export the model (on its backend; --set backend=triton needs TRITON_INTERPRET=1 on the CPU "
        "and is not available for ONNX) for a fixed input shape (batch size x 3 x H x W). "
        "SHaRPose is exported with a fixed exit policy, every sample refined, and returns the tuple "
        f"({', '.join(SHaRPose.output_names)}); ViTPose returns (heatmaps,). The exported file is then run on a "
        "random batch and compared with the eager model: the max difference of each output is printed and "
        "the exit code is 1 when one exceeds --atol. ONNX needs the onnx and onnxruntime packages.")
    add_model_args(p, None)
    p.add_argument("--format", required=True, choices=list(FORMATS), help="onnx, torchscript or exported-program")
    p.add_argument("--out", type=Path, metavar="PATH",
                   help="output file (default: MODEL.onnx / MODEL.pt / MODEL.pt2 by format)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="fixed batch size of the export (default: 1)")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest accepted |exported - eager| of any output (default: 1e-4)")
    p.set_defaults(run=cmd_export)


def build_parser() -> Parser:
    parser = Parser(prog="sharpose", description="SHaRPose / ViTPose human pose estimation: demo pictures, export, "
                    "FLOP table, and the training, evaluation and benchmark commands.",
                    epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    build_demo_parser(sub, common)
    build_export_parser(sub, common)
    flops = sub.add_parser("flops", parents=[common],
                           help="parameter and FLOP table (fvcore) beside the published figures",
                           description="Parameters and GFLOPs (fvcore, batch 1) of the named models beside the "
                           "released code's and the papers' figures; with no --model, every model and the alpha "
                           "sweep of paper Table 6 (slow: a minute or two).")
    flops.add_argument("--model", dest="models", type=model_arg, action="append", metavar="NAME",
                       help="only this model (repeatable)")
    flops.set_defaults(run=cmd_flops)
    for name, (_, help_text) in FORWARDED.items():  # listed for --help; main() dispatches them itself
        sub.add_parser(name, help=help_text, add_help=False).add_argument("args", nargs=argparse.REMAINDER)
    return parser


def split_forwarded(argv: list[str]) -> tuple[bool, str, list[str]] | None:
    """(debug, command, its arguments) when `argv` runs a forwarded command, else None."""
    leading = 0
    while leading < len(argv) and argv[leading] == "--debug":
        leading += 1
    if leading < len(argv) and argv[leading] in FORWARDED:
        return leading > 0, argv[leading], argv[leading + 1 :]
    return None


def one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return lines[0] + (" (more with --debug)" if len(lines) > 1 else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `sharpose` command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    forwarded = split_forwarded(argv)
    args = None if forwarded else build_parser().parse_args(argv)
    debug = forwarded[0] if forwarded else args.debug
    try:
        return run_forwarded(*forwarded[1:]) if forwarded else args.run(args)
    except (CliError, ImportError, OSError, ValueError, RuntimeError) as err:
        if debug:
            traceback.print_exc()
        print(f"sharpose: error: {one_line(err)}", file=sys.stderr)
        return 1
