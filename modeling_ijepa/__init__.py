# SPDX-License-Identifier: Apache-2.0
"""I-JEPA and V-JEPA self-supervised pretraining for the Hugging Face ecosystem."""

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining
from transformers import IJepaConfig as StockIJepaConfig
from transformers import VJEPA2Config as StockVJEPA2Config

from .configuration_ijepa import IJepaConfig
from .configuration_vjepa import VJepaConfig
from .configuration_vjepa2 import VJepa2Config
from .data.masking import MaskType, MultiBlock3DMaskCollator, MultiBlockMaskCollator
from .modeling_ijepa import IJepaForPreTraining, IJepaForPreTrainingOutput, IJepaModel, IJepaPredictor
from .modeling_vjepa import VJepaForPreTraining, VJepaForPreTrainingOutput, VJepaModel, VJepaPredictor
from .modeling_vjepa2 import VJepa2Encoder, VJepa2ForPreTraining, VJepa2ForPreTrainingOutput, VJepa2Predictor

# `AutoConfig` resolves the `ijepa` model type to transformers' own config class, so both it and ours map to
# the pretraining model. Encoders stay with stock `AutoModel`, which loads our checkpoints as they are.
AutoModelForPreTraining.register(StockIJepaConfig, IJepaForPreTraining, exist_ok=True)
AutoModelForPreTraining.register(IJepaConfig, IJepaForPreTraining, exist_ok=True)
# V-JEPA has no counterpart in transformers: register it with all three Auto classes. Its classes also
# register for `auto_map`, so saved folders load with `trust_remote_code=True` without this package.
AutoConfig.register("vjepa", VJepaConfig, exist_ok=True)
AutoModel.register(VJepaConfig, VJepaModel, exist_ok=True)
AutoModelForPreTraining.register(VJepaConfig, VJepaForPreTraining, exist_ok=True)
# V-JEPA 2 keeps transformers' `vjepa2` model type, as I-JEPA keeps `ijepa`: `AutoModel` loads stock `VJEPA2Model`
# (an exported folder, or the target encoder and predictor of a pretraining folder); pretraining maps to ours.
# `register` refuses a config class whose name differs from the model's `config_class` (`VJEPA2Config` is not
# `VJepa2Config`), so the stock config goes into the mapping directly.
AutoModelForPreTraining._model_mapping.register(StockVJEPA2Config, VJepa2ForPreTraining, exist_ok=True)
AutoModelForPreTraining.register(VJepa2Config, VJepa2ForPreTraining, exist_ok=True)

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
    "VJepa2Config",
    "VJepa2Encoder",
    "VJepa2Predictor",
    "VJepa2ForPreTraining",
    "VJepa2ForPreTrainingOutput",
]
