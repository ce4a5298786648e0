# SPDX-License-Identifier: Apache-2.0
"""Pretraining: the command-line arguments, the model of a run, the schedules, the optimizer step (AdamW,
clipping, EMA), the loop, checkpoints, run control (lock, preemption) and the collapse monitor."""
