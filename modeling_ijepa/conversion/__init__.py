# SPDX-License-Identifier: Apache-2.0
"""Conversion of the reference implementations' checkpoints into this package's models.

    python -m modeling_ijepa.conversion --checkpoint IN1K-vit.h.14-300e.pth.tar --output_dir out --num_attention_heads 16
    python -m modeling_ijepa.conversion.vjepa2 --checkpoint vitl.pt --output_dir out --num_attention_heads 16 ...

`reference` reads a checkpoint safely and loads tensors strictly; `ijepa`, `vjepa` and `vjepa2` map each
reference's names onto ours.
"""

from modeling_ijepa.conversion.ijepa import convert_checkpoint, write_converted
from modeling_ijepa.conversion.vjepa2 import convert_vjepa2

__all__ = ["convert_checkpoint", "convert_vjepa2", "write_converted"]
