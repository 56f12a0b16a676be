from sharpose.models.base import PoseModel
from sharpose.models.factory import MODEL_CONFIGS, create_model, list_models
from sharpose.models.output import PoseOutput, TupleOutputs
from sharpose.models.sharpose import SHaRPose, SHaRPoseOutput
from sharpose.models.vitpose import ViTPose

__all__ = [
    "MODEL_CONFIGS",
    "PoseModel",
    "PoseOutput",
    "SHaRPose",
    "SHaRPoseOutput",
    "TupleOutputs",
    "ViTPose",
    "create_model",
    "list_models",
]
