"""Training: losses, layer-decay AdamW and schedule, checkpoint initialisation, the (DDP) loop."""
from sharpose.training.init_weights import InitReport, initialise_from_checkpoint
from sharpose.training.loop import train, train_step
from sharpose.training.loss import LossOutput, joints_mse_loss, pose_loss
from sharpose.training.optim import LrSchedule, build_optimizer, layer_decay_param_groups

__all__ = [
    "InitReport",
    "LossOutput",
    "LrSchedule",
    "build_optimizer",
    "initialise_from_checkpoint",
    "joints_mse_loss",
    "layer_decay_param_groups",
    "pose_loss",
    "train",
    "train_step",
]
