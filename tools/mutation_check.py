"""Plant known bugs one at a time in a scratch copy of the repository and run the tests that must
catch each: a mutation the tests let through ("survived") is a hole in the suite.

    PYTHONPATH=. python tools/mutation_check.py            # every mutation
    PYTHONPATH=. python tools/mutation_check.py --list     # names only
    PYTHONPATH=. python tools/mutation_check.py lse-fp16 adaptive-boundary

Prints one line per mutation (killed / survived / not applicable) and exits non-zero when one survived.
The list of bugs and the tests that catch them is tests/KNOWN_BUGS_CAUGHT.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    edits: tuple[tuple[str, str], ...]  # (exact text, replacement): each text must occur exactly once
    tests: tuple[str, ...]  # pytest node ids that must fail


MUTATIONS = (
    Mutation(
        "lse-fp16",
        "kernels/fused_attention.py",
        (("m_i + tl.log2(l_i), mask=", "(m_i + tl.log2(l_i)).to(tl.float16).to(tl.float32), mask="),),
        ("tests/test_fused_attention.py::test_launchers_with_cuda_configs",),
    ),
    Mutation(
        "score-not-head-mean",
        "kernels/fused_attention.py",
        (("float(score_weight) / H,", "float(score_weight),"),),
        ("tests/test_model_triton.py::test_triton_gradients_match_reference",),
    ),
    Mutation(
        "score-spare-slots-not-zeroed",
        "kernels/fused_attention.py",
        (("        if block == first_block:\n            _zero_score_slots(", "        if False:\n            _zero_score_slots("),),
        ("tests/test_fused_attention.py::test_score_term_every_slot_written",
         "tests/test_attention_score.py::test_extreme_logits_batched"),
    ),
    Mutation(
        "adaptive-boundary",
        "sharpose/models/selection.py",
        (("(mass < self.tau)", "(mass <= self.tau)"),),
        ("tests/test_selection.py::test_adaptive_count_when_the_mass_lands_exactly_on_tau",),
    ),
    Mutation(
        "dark-cross-derivative-sign",
        "sharpose/evaluation/decode.py",
        (("(d * dx - dxy * dy)", "(d * dx + dxy * dy)"), ("(a * dy - dxy * dx)", "(a * dy + dxy * dx)")),
        ("tests/test_evaluation_decode.py::test_dark_udp_on_rotated_anisotropic_gaussians",),
    ),
    Mutation(
        "fine-children-transposed",
        "sharpose/models/selection.py",
        (("[:, None] + child // 2, (coarse_patch % wc * 2)[:, None] + child % 2",
          "[:, None] + child % 2, (coarse_patch % wc * 2)[:, None] + child // 2"),),
        ("tests/test_selection.py::test_fine_children_child_order",),
    ),
    Mutation(
        "flip-pairs-wrong-involution",
        "sharpose/data/keypoints.py",
        (("flip_pairs=((1, 2), (3, 4),", "flip_pairs=((1, 4), (3, 2),"),),
        ("tests/test_evaluation_decode.py::test_flip_permutation_pairs_each_joint_with_its_mirror_by_name",),
    ),
    Mutation(
        "flip-back-no-mirror",
        "sharpose/evaluation/decode.py",
        (("heatmaps[:, torch.as_tensor(perm, device=heatmaps.device)].flip(-1)",
          "heatmaps[:, torch.as_tensor(perm, device=heatmaps.device)]"),),
        ("tests/test_evaluate_runner.py::test_qthres_sweep_from_one_pass_matches_running_each_threshold",),
    ),
)


def scratch_copy(dest: Path) -> None:
    """The working tree's tracked and untracked (not ignored) files."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def apply(mutation: Mutation, root: Path) -> str | None:
    """Edit the copy; returns why the mutation does not apply, or None."""
    path = root / mutation.path
    if not path.is_file():
        return f"{mutation.path} not found"
    text = path.read_text()
    for old, new in mutation.edits:
        if text.count(old) != 1:
            return f"{old!r} occurs {text.count(old)} times in {mutation.path}"
        text = text.replace(old, new)
    path.write_text(text)
    return None


def run(mutation: Mutation, timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutation.name}-") as tmp:
        root = Path(tmp)
        scratch_copy(root)
        why = apply(mutation, root)
        if why:
            return f"not applicable ({why})"
        env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        # one process: with -x, xdist reports the first failure as an interruption (exit status 2)
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider", *mutation.tests]
        try:
            proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "error (timed out)"
        if proc.returncode == 1:
            return "killed"
        if proc.returncode == 0:
            return "survived"
        return f"error (pytest exit status {proc.returncode}: {proc.stdout.strip().splitlines()[-1:]})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="print the mutation names and exit")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per mutation")
    args = parser.parse_args()
    known = {m.name: m for m in MUTATIONS}
    if args.list:
        print("\n".join(known))
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutation(s) {unknown}; known: {', '.join(known)}")
    survived = False
    for mutation in [known[n] for n in args.names] or MUTATIONS:
        start = time.perf_counter()
        result = run(mutation, args.timeout)
        survived |= result == "survived"
        print(f"{mutation.name:32s} {result:10s} {time.perf_counter() - start:6.0f} s", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
