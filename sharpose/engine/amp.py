"""Mixed precision: the config's amp setting as a torch.autocast context."""
from __future__ import annotations

import torch

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """torch.autocast for `amp` ("none", "fp16" or "bf16") on the device's type; disabled for "none"."""
    return torch.autocast(device.type, dtype=AMP_DTYPES.get(amp), enabled=amp in AMP_DTYPES)
