#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""Frozen-feature evaluation of an I-JEPA / V-JEPA / V-JEPA 2 encoder: linear probe, attentive probe (video), kNN.

    python run_linear_probe.py --model_name_or_path outputs/ijepa --dataset_name ../shared/data/cifar10 \
        --output_dir outputs/probe_cifar10

`python run_linear_probe.py --help` lists every argument; the work is done by `modeling_ijepa.evaluation`.
"""

from modeling_ijepa.cli import run_entry_point
from modeling_ijepa.evaluation.linear_probe import main

if __name__ == "__main__":
    run_entry_point(main)
