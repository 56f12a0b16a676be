from sharpose.models.factory import MODEL_CONFIGS, create_model, list_models
from sharpose.models.sharpose import SHaRPose, SHaRPoseOutput
from sharpose.models.vitpose import ViTPose

__all__ = ["MODEL_CONFIGS", "SHaRPose", "SHaRPoseOutput", "ViTPose", "create_model", "list_models"]
