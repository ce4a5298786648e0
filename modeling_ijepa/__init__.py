"""I-JEPA and V-JEPA self-supervised pretraining for the Hugging Face ecosystem."""

from transformers import AutoModelForPreTraining
from transformers import IJepaConfig as StockIJepaConfig

from .configuration_ijepa import IJepaConfig
from .masking import MultiBlock3DMaskCollator, MultiBlockMaskCollator
from .modeling_ijepa import IJepaForPreTraining, IJepaForPreTrainingOutput, IJepaModel, IJepaPredictor

# `AutoConfig` resolves the `ijepa` model type to transformers' own config class, so both it and ours map to
# the pretraining model. Encoders stay with stock `AutoModel`, which loads our checkpoints as they are.
AutoModelForPreTraining.register(StockIJepaConfig, IJepaForPreTraining, exist_ok=True)
AutoModelForPreTraining.register(IJepaConfig, IJepaForPreTraining, exist_ok=True)

__all__ = [
    "IJepaConfig",
    "IJepaModel",
    "IJepaPredictor",
    "IJepaForPreTraining",
    "IJepaForPreTrainingOutput",
    "MultiBlockMaskCollator",
    "MultiBlock3DMaskCollator",
]
