"""Validation of the image batch a pose model is given: clear errors instead of wrong answers."""
from __future__ import annotations

import torch


def check_images(
    images: torch.Tensor, in_chans: int, input_size: tuple[int, int], model: str, check_finite: bool = True
) -> None:
    """Raise ValueError naming the problem when `images` is not a finite (B, C, H, W) float batch.

    `check_finite=False` leaves the NaN/inf test (a host-device sync) to the caller."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{model} expects a torch.Tensor of images, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{model} expects images of shape (B, {in_chans}, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] != in_chans:
        raise ValueError(
            f"{model} expects {in_chans} image channels, got {images.shape[1]} (shape {tuple(images.shape)})"
        )
    if tuple(images.shape[2:]) != tuple(input_size):
        raise ValueError(
            f"{model} was built for {input_size[0]}x{input_size[1]} (H x W) inputs, got "
            f"{images.shape[2]}x{images.shape[3]}; resize the crops or create the model with "
            f"input_size=({images.shape[2]}, {images.shape[3]})"
        )
    if not images.is_floating_point():
        raise ValueError(f"{model} expects floating-point images (normalised), got dtype {images.dtype}")
    if check_finite and images.numel() and not is_tracing() and not torch.isfinite(images).all():
        raise ValueError(f"{model} got images containing NaN or inf values")


def is_tracing() -> bool:
    """Inside torch.jit.trace, torch.export / torch.compile or ONNX export, where no host sync may happen."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()
