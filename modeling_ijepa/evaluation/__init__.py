# SPDX-License-Identifier: Apache-2.0
"""Frozen-feature evaluation: features and their cache, subsets, linear and attentive probes, kNN and metrics; the
probe command (`run_linear_probe.py`) and the probe a pretraining run ends with."""
