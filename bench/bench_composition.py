"""Fine-stage token composition: the released op chain against the sparse pipeline and the Triton op.

SHaRPose-B (D 768, patch 16, 17 keypoints), every sample refined, k selected patches each:
    256x192: coarse grid 8x6 -> fine 16x12, k = 20     384x288: coarse 12x9 -> fine 24x18, k = 33

(a)  released op chain: reuse MLP on all N_c coarse outputs, nearest upsample to the fine grid,
     add to the patch embedding of all N_f fine patches (+ fine pos), gather the children, cat
(a') its composition part only (upsample + add + gather + cat, given the MLP output and the full
     fine embedding): what compose_tokens replaces
(b)  sparse pipeline: gather the k parents, reuse MLP on them only, patch-embed only their 4k fine
     children (gather their pixels, matmul with the conv weight), compose_tokens
(c)  compose_tokens alone
(d)  a plain copy of the output's bytes (torch.empty_like(out).copy_(out)): the memory-bound floor

On CUDA every line is timed with triton.testing.do_bench (median ms). Targets: (a') / (c) >= 5 and
(c) / (d) <= 2. Without a GPU the Triton kernel cannot be timed (the interpreter is a correctness
tool), so the CPU run times only (a) against (b) built on the *PyTorch reference* composition, at a
small batch.

    python bench/bench_composition.py                     # CUDA: batches 64 and 256, fp16
    python bench/bench_composition.py --dtype float32 --backward
    python bench/bench_composition.py --resources         # registers / spills of the kernels (no GPU)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import reference

NUM_KEYPOINTS = 17
PATCH = 16


@dataclass(frozen=True)
class Setting:
    name: str
    input_size: tuple[int, int]
    k: int

    @property
    def coarse_grid(self) -> tuple[int, int]:
        return self.input_size[0] // (2 * PATCH), self.input_size[1] // (2 * PATCH)


SETTINGS = (Setting("SHaRPose-B 256x192", (256, 192), 20), Setting("SHaRPose-B 384x288", (384, 288), 33))


class Inputs:
    """Random weights and activations of one batch (every sample refined)."""

    def __init__(self, setting: Setting, batch: int, dim: int, dtype: torch.dtype, device: torch.device):
        hc, wc = setting.coarse_grid
        n_c = hc * wc
        self.setting, self.batch, self.dim, self.k = setting, batch, dim, setting.k
        self.patch = nn.Conv2d(3, dim, PATCH, stride=PATCH).to(device, dtype)
        self.reuse_block = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        ).to(device, dtype)
        self.images = torch.randn(batch, 3, *setting.input_size, device=device, dtype=dtype)
        self.keypoint_tokens = torch.randn(NUM_KEYPOINTS, dim, device=device, dtype=dtype)
        self.fine_pos = torch.randn(4 * n_c, dim, device=device, dtype=dtype)
        self.coarse_embed = torch.randn(batch, n_c, dim, device=device, dtype=dtype)
        self.coarse_out = torch.randn(batch, n_c, dim, device=device, dtype=dtype)
        self.order = torch.randn(batch, n_c, device=device).argsort(dim=1, descending=True)
        # (a') and (c) start from what the MLP / patch embedding produced
        with torch.no_grad():
            self.reuse_all = self.reuse_block(self.coarse_out)
            self.fine_embed_all = self.patch(self.images).flatten(2).transpose(1, 2).contiguous()
            self.fine_embed_sel, self.reuse_sel = self.sparse_inputs()

    # -- (a) / (a') the released chain --------------------------------------------------------

    def released_composition(self, reuse_all: torch.Tensor, fine_embed_all: torch.Tensor) -> torch.Tensor:
        B, D, k = self.batch, self.dim, self.k
        (hc, wc) = self.setting.coarse_grid
        hf, wf = 2 * hc, 2 * wc
        reuse = reuse_all.transpose(1, 2).reshape(B, D, hc, wc)
        reuse = F.interpolate(reuse, size=(hf, wf), mode="nearest").flatten(2).transpose(1, 2)
        fine_tokens = fine_embed_all + self.fine_pos + reuse
        chosen, rest = self.order[:, :k], self.order[:, k:]
        top_left = (chosen // wc) * 2 * wf + (chosen % wc) * 2
        children = torch.cat([top_left + dy * wf + dx for dy in (0, 1) for dx in (0, 1)], dim=1)

        def gather(tokens, index):
            return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, D))

        return torch.cat(
            [self.keypoint_tokens.expand(B, -1, -1), gather(fine_tokens, children), gather(self.coarse_embed, rest)],
            dim=1,
        )

    def released_chain(self) -> torch.Tensor:
        fine_embed_all = self.patch(self.images).flatten(2).transpose(1, 2)
        return self.released_composition(self.reuse_block(self.coarse_out), fine_embed_all)

    # -- (b) the sparse pipeline ---------------------------------------------------------------

    def sparse_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Reuse MLP on the selected parents only; patch embedding of their fine children only."""
        B, D, k = self.batch, self.dim, self.k
        wc = self.setting.coarse_grid[1]
        chosen = self.order[:, :k]
        parents = self.coarse_out.gather(1, chosen.unsqueeze(-1).expand(-1, -1, D))
        reuse = self.reuse_block(parents.reshape(B * k, D))
        child = torch.arange(4, device=chosen.device)
        fy = (chosen // wc * 2)[..., None] + child // 2  # (B, k, 4), parent-major
        fx = (chosen % wc * 2)[..., None] + child % 2
        cells = self.images.unflatten(2, (-1, PATCH)).unflatten(4, (-1, PATCH))  # (B, C, hf, P, wf, P)
        batch_index = torch.arange(B, device=chosen.device)[:, None, None]
        pixels = cells.permute(0, 2, 4, 1, 3, 5)[batch_index, fy, fx]  # (B, k, 4, C, P, P)
        fine_embed = F.linear(pixels.reshape(B * k * 4, -1), self.patch.weight.flatten(1), self.patch.bias)
        return fine_embed, reuse

    def sparse_pipeline(self, compose_padded) -> torch.Tensor:
        fine_embed, reuse = self.sparse_inputs()
        return compose_padded(self.keypoint_tokens, fine_embed, self.fine_pos, reuse, self.coarse_embed, self.order,
                              self.setting.coarse_grid, self.k)

    def compose(self, compose_padded) -> torch.Tensor:
        return compose_padded(self.keypoint_tokens, self.fine_embed_sel, self.fine_pos, self.reuse_sel,
                              self.coarse_embed, self.order, self.setting.coarse_grid, self.k)


def _fwd_bwd(fn, leaves):
    def run():
        out = fn()
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        return grads

    return run


def bench_cuda(batches, dtype: torch.dtype, backward: bool) -> None:
    import triton

    from kernels.token_composition import compose_tokens_padded

    device = torch.device("cuda")

    def timed(fn):
        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")

    print(f"device: {torch.cuda.get_device_name()}, dtype {str(dtype).removeprefix('torch.')}, "
          f"torch {torch.__version__}, triton {triton.__version__}")
    for setting in SETTINGS:
        for batch in batches:
            x = Inputs(setting, batch, 768, dtype, device)
            with torch.no_grad():
                ours = x.compose(compose_tokens_padded)
                torch.testing.assert_close(ours, x.compose(reference.compose_tokens_padded), msg="Triton != reference")
                out_bytes = ours.numel() * ours.element_size()
                t = {
                    "a": timed(x.released_chain),
                    "a'": timed(lambda: x.released_composition(x.reuse_all, x.fine_embed_all)),
                    "b": timed(lambda: x.sparse_pipeline(compose_tokens_padded)),
                    "c": timed(lambda: x.compose(compose_tokens_padded)),
                    "d": timed(lambda: torch.empty_like(ours).copy_(ours)),
                }
            L = ours.shape[1]
            print(f"\n{setting.name}, batch {batch}, k {setting.k}: output ({batch}, {L}, 768), "
                  f"{out_bytes / 2**20:.1f} MiB")
            labels = {
                "a": "(a)  released chain (MLP all + upsample + add + gather + cat)",
                "a'": "(a') released composition only (upsample + add + gather + cat)",
                "b": "(b)  sparse pipeline (gather + MLP on k + embed 4k + compose)",
                "c": "(c)  compose_tokens",
                "d": "(d)  copy of the output bytes",
            }
            for key, label in labels.items():
                extra = f"  {out_bytes / t[key] / 1e6:7.1f} GB/s (output bytes)" if key in ("c", "d") else ""
                print(f"  {label:<66} {t[key]:8.4f} ms{extra}")
            print(f"  (a) / (b)  = {t['a'] / t['b']:6.2f}x   whole pipeline")
            composition_speedup = t["a'"] / t["c"]
            print(f"  (a') / (c) = {composition_speedup:6.2f}x   composition (target >= 5x)")
            print(f"  (c) / (d)  = {t['c'] / t['d']:6.2f}x   vs a plain copy (target <= 2x)")
            if backward:
                leaves_ref = [x.reuse_all.requires_grad_(), x.fine_embed_all.requires_grad_()]
                leaves_ours = [x.fine_embed_sel.requires_grad_(), x.reuse_sel.requires_grad_(),
                               x.coarse_embed.requires_grad_(), x.fine_pos.requires_grad_()]
                t_ref = timed(_fwd_bwd(lambda: x.released_composition(*leaves_ref), leaves_ref))
                t_ours = timed(_fwd_bwd(lambda: x.compose(compose_tokens_padded), leaves_ours))
                print(f"  forward + backward: (a') {t_ref:.4f} ms, (c) {t_ours:.4f} ms, ratio {t_ref / t_ours:.2f}x")
                for leaf in leaves_ref + leaves_ours:
                    leaf.requires_grad_(False)


def bench_cpu(batch: int, reps: int) -> None:
    print("No CUDA device: the Triton kernel is not timed (under TRITON_INTERPRET it is a correctness tool).")
    print(f"CPU only: (a) the released op chain vs (b) the sparse pipeline with the PyTorch *reference*\n"
          f"composition (kernels.reference.compose_tokens_padded), fp32, batch {batch}, "
          f"median of {reps} runs, {torch.get_num_threads()} threads.")

    def timed(fn):
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    for setting in SETTINGS:
        x = Inputs(setting, batch, 768, torch.float32, torch.device("cpu"))
        with torch.no_grad():
            t_a = timed(x.released_chain)
            t_b = timed(lambda: x.sparse_pipeline(reference.compose_tokens_padded))
            t_c = timed(lambda: x.compose(reference.compose_tokens_padded))
        print(f"\n{setting.name}, batch {batch}, k {setting.k}")
        print(f"  (a) released chain                         {t_a:9.2f} ms")
        print(f"  (b) sparse pipeline, reference composition {t_b:9.2f} ms   (a)/(b) = {t_a / t_b:.2f}x")
        print(f"      of which the reference composition     {t_c:9.2f} ms")


def report_resources(dims, dtypes) -> None:
    from kernels.aot import composition_kernel_specs, measure_specs, tools_available

    ok, why = tools_available()
    if not ok:
        sys.exit(f"cannot measure: {why}")
    specs = composition_kernel_specs(capabilities=(80, 90), dims=tuple(dims),
                                     dtypes=tuple(getattr(torch, d) for d in dtypes))
    rows = measure_specs(specs)
    cols = ["capability", "variant", "dtype", "dim", "block_m", "block_n", "num_warps", "registers",
            "spill_stores", "spill_loads", "stack", "shared_mem"]
    heads = ["sm", "kernel", "dtype", "D", "rows", "BLOCK_D", "warps", "regs", "spill st", "spill ld", "stack",
             "smem B"]
    table = [heads] + [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    for n, line in enumerate(table):
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--backward", action="store_true", help="also time forward + backward of (a') and (c)")
    parser.add_argument("--cpu-batch", type=int, default=4)
    parser.add_argument("--cpu-reps", type=int, default=5)
    parser.add_argument("--resources", action="store_true",
                        help="compile the kernels for sm_80 / sm_90 and print registers and spills")
    parser.add_argument("--dims", type=int, nargs="+", default=[768])
    parser.add_argument("--resource-dtypes", nargs="+", default=["float16", "bfloat16", "float32"])
    args = parser.parse_args()
    if args.resources:
        report_resources(args.dims, args.resource_dtypes)
    elif torch.cuda.is_available():
        bench_cuda(args.batches, getattr(torch, args.dtype), args.backward)
    else:
        bench_cpu(args.cpu_batch, args.cpu_reps)


if __name__ == "__main__":
    main()
