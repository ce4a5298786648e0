"""I-JEPA and V-JEPA self-supervised pretraining for the Hugging Face ecosystem."""

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining
from transformers import IJepaConfig as StockIJepaConfig

from .configuration_ijepa import IJepaConfig
from .configuration_vjepa import VJepaConfig
from .masking import MaskType, MultiBlock3DMaskCollator, MultiBlockMaskCollator
from .modeling_ijepa import IJepaForPreTraining, IJepaForPreTrainingOutput, IJepaModel, IJepaPredictor
from .modeling_vjepa import VJepaForPreTraining, VJepaForPreTrainingOutput, VJepaModel, VJepaPredictor

# `AutoConfig` resolves the `ijepa` model type to transformers' own config class, so both it and ours map to
# the pretraining model. Encoders stay with stock `AutoModel`, which loads our checkpoints as they are.
AutoModelForPreTraining.register(StockIJepaConfig, IJepaForPreTraining, exist_ok=True)
AutoModelForPreTraining.register(IJepaConfig, IJepaForPreTraining, exist_ok=True)
# V-JEPA has no counterpart in transformers: register it with all three Auto classes. Its classes also
# register for `auto_map`, so saved folders load with `trust_remote_code=True` without this package.
AutoConfig.register("vjepa", VJepaConfig, exist_ok=True)
AutoModel.register(VJepaConfig, VJepaModel, exist_ok=True)
AutoModelForPreTraining.register(VJepaConfig, VJepaForPreTraining, exist_ok=True)

__all__ = [
    "IJepaConfig",
    "IJepaModel",
    "IJepaPredictor",
    "IJepaForPreTraining",
    "IJepaForPreTrainingOutput",
    "MaskType",
    "MultiBlockMaskCollator",
    "MultiBlock3DMaskCollator",
    "VJepaConfig",
    "VJepaModel",
    "VJepaPredictor",
    "VJepaForPreTraining",
    "VJepaForPreTrainingOutput",
]
