#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""I-JEPA (images), V-JEPA and V-JEPA 2 (video) self-supervised pretraining with Accelerate.

    accelerate launch run_pretraining.py --config configs/cifar10_vit_tiny.yaml --output_dir outputs/cifar10

With no dataset argument it pretrains on scikit-learn's bundled digits, a real image set that needs no
download. At the end `--output_dir` holds the target encoder in transformers' format (loadable with
`AutoModel.from_pretrained` and the image-feature-extraction pipeline), the full pretraining model in
`pretraining/`, the training curves and a model card; `--push_to_hub` uploads it.
"""

from modeling_ijepa.cli import run_entry_point
from modeling_ijepa.training.arguments import parse_args
from modeling_ijepa.training.pretraining import main

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    run_entry_point(main)
