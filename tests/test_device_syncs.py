# SPDX-License-Identifier: Apache-2.0
"""The training step reads nothing back to the host.

On an accelerator a read of a tensor's value on the host waits until every queued kernel is done, so the host cannot
run ahead and the device idles. `.item()`, `int(tensor)` and `bool(tensor)` dispatch `aten._local_scalar_dense`, on
the CPU as well, and `torch.nonzero` reads the size of its result: counting the two on the CPU finds the reads that
the same step would make on a GPU."""

import torch
from accelerate import Accelerator
from torch.utils._python_dispatch import TorchDispatchMode

from modeling_ijepa import IJepaForPreTraining, VJepaConfig, VJepaForPreTraining
from modeling_ijepa.training.optimization import PretrainingStep, build_optimizer
from modeling_ijepa.training.schedules import Schedules

SYNCING_OPERATORS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default}


class CountSyncs(TorchDispatchMode):
    """Counts the operators that copy a value from the device to the host, by name. Reads of `ignored` tensors are
    not counted: AdamW keeps its step counters on the host (off CUDA graphs), where reading them costs no sync."""

    def __init__(self, ignored: tuple[torch.Tensor, ...] = ()):
        super().__init__()
        self.counts = {}
        self.ignored = {id(tensor) for tensor in ignored}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNCING_OPERATORS and not (args and id(args[0]) in self.ignored):
            self.counts[str(func)] = self.counts.get(str(func), 0) + 1
        return func(*args, **(kwargs or {}))


def count_syncs_of_training_step(model, *inputs):
    model.train()
    with CountSyncs() as syncs:
        model(*inputs).loss.backward()
    # The step really ran, backward included.
    assert all(p.grad is not None for p in model.predictor.parameters() if p.requires_grad)
    return syncs.counts


def test_ijepa_training_step_has_no_device_to_host_syncs(tiny_ijepa_config):
    model = IJepaForPreTraining(tiny_ijepa_config)
    context_indices = torch.stack([torch.randperm(64)[:20] for _ in range(2)])  # [B, Kc]
    target_indices = torch.randint(0, 64, (2, 4, 9))  # [B, M, Kt]
    pixel_values = torch.randn(2, 3, 32, 32)
    assert count_syncs_of_training_step(model, pixel_values, context_indices, target_indices) == {}


def test_vjepa_training_step_has_no_device_to_host_syncs():
    config = VJepaConfig(
        image_size=16,
        num_frames=4,
        tubelet_size=2,
        patch_size=4,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        predictor_hidden_size=32,
        predictor_num_hidden_layers=2,
    )
    model = VJepaForPreTraining(config)
    num_tokens = config.num_patches
    context_indices = [torch.stack([torch.randperm(num_tokens)[:length] for _ in range(2)]) for length in (10, 6)]
    target_indices = [torch.stack([torch.randperm(num_tokens)[:length] for _ in range(2)]) for length in (12, 20)]
    clips = torch.randn(2, 4, 3, 16, 16)  # [B, T, C, H, W]
    assert count_syncs_of_training_step(model, clips, context_indices, target_indices) == {}


def test_the_whole_optimizer_step_has_no_device_to_host_syncs(tiny_ijepa_config):
    """Schedules, forward, backward, clipping of each network, AdamW and the EMA update: the step of the script."""
    model = IJepaForPreTraining(tiny_ijepa_config).train()
    schedules = Schedules(total_steps=4, warmup_steps=1, lr=1e-3, start_lr=1e-4, final_lr=1e-6, weight_decay=0.04,
                          final_weight_decay=0.4, ema_momentum=0.996, final_ema_momentum=1.0)
    step = PretrainingStep(Accelerator(cpu=True), model, build_optimizer(model, lr=1e-3), schedules, max_grad_norm=1.0)
    batch = {
        "pixel_values": torch.randn(2, 3, 32, 32),
        "context_indices": torch.stack([torch.randperm(64)[:20] for _ in range(2)]),
        "target_indices": torch.randint(0, 64, (2, 4, 9)),
    }
    step(batch, step=1, epoch=0)  # the optimizer creates its state on the first step
    step_counters = tuple(state["step"] for state in step.optimizer.state.values())
    with CountSyncs(ignored=step_counters) as syncs:
        result = step(batch, step=2, epoch=0)
    assert result.updated and result.clipped
    assert syncs.counts == {}


def test_ijepa_options_add_no_device_to_host_syncs(tiny_ijepa_config):
    """Several mask draws per image and the variance-covariance regulariser, both on."""
    tiny_ijepa_config.variance_loss_weight, tiny_ijepa_config.covariance_loss_weight = 1.0, 0.04
    model = IJepaForPreTraining(tiny_ijepa_config)
    context_indices = torch.stack([torch.randperm(64)[:20] for _ in range(6)])  # [B * N, Kc], N = 3 draws
    target_indices = torch.randint(0, 64, (6, 4, 9))  # [B * N, M, Kt]
    pixel_values = torch.randn(2, 3, 32, 32)
    assert count_syncs_of_training_step(model, pixel_values, context_indices, target_indices) == {}
