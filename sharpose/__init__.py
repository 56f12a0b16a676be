"""SHaRPose (sparse high-resolution ViT pose estimation) and the ViTPose baseline, with Triton kernels."""
from sharpose.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sharpose.models import (
    MODEL_CONFIGS,
    PoseModel,
    PoseOutput,
    SHaRPose,
    SHaRPoseOutput,
    ViTPose,
    create_model,
    list_models,
)

__all__ = [
    "MODEL_CONFIGS",
    "CheckpointError",
    "PoseModel",
    "PoseOutput",
    "SHaRPose",
    "SHaRPoseOutput",
    "ViTPose",
    "create_model",
    "list_models",
    "load_checkpoint",
    "save_checkpoint",
]
__version__ = "0.1.0"
