# SPDX-License-Identifier: Apache-2.0
"""Replays the reference implementations' own training runs through the training step that the script uses.

Each `<name>_trajectory.json` fixture (with its `_init.pth.tar` and `_trajectory.safetensors`) holds a reference
initial checkpoint, the images and masks of every step, the loss, learning rate, weight decay and EMA momentum the
reference used at every step, and all three networks after the last step. The checkpoint goes through our
converter, every step through `PretrainingStep`, and everything is compared. Every number comes from the fixture,
so another fixture of the same format is replayed without changing this file.
"""

import json

import pytest
import torch
from accelerate import Accelerator
from safetensors import safe_open

from modeling_ijepa.conversion.ijepa import convert_checkpoint, convert_encoder, convert_predictor, strip_prefix
from modeling_ijepa.training.optimization import PretrainingStep, build_optimizer
from modeling_ijepa.training.schedules import Schedules

from .conftest import OFFICIAL

LOSS_ATOL = 1e-5
WEIGHT_ATOL = 1e-5
SCHEDULE_RTOL = 1e-12


def fixture_names() -> list[str]:
    names = sorted(path.name.removesuffix("_trajectory.json") for path in OFFICIAL.glob("*_trajectory.json"))
    return names or [pytest.param(None, marks=pytest.mark.skip(reason=f"no trajectory fixtures in {OFFICIAL}"))]


def step_inputs(tensors: dict, model_numbers: dict, index: int) -> dict:
    """The model inputs of 0-based step `index`, from the reference's layouts."""
    if "num_frames" in model_numbers:
        mask_types = sorted({key.split("_")[2] for key in tensors if key.startswith("context_indices_")})
        return {
            "pixel_values_videos": tensors["pixel_values_videos"][index],  # [B, C, T, H, W]
            "channels_before_time": True,
            "context_indices": [tensors[f"context_indices_{kind}_step{index}"] for kind in mask_types],
            "target_indices": [tensors[f"target_indices_{kind}_step{index}"] for kind in mask_types],
        }
    return {
        "pixel_values": tensors["pixel_values"][index],
        "context_indices": tensors[f"context_indices_step{index}"],
        # The reference stacks its M target blocks as [M, B, Kt]; the model takes [B, M, Kt].
        "target_indices": tensors[f"target_indices_step{index}"].permute(1, 0, 2),
    }


def schedules_of(optimization: dict, total_steps: int) -> Schedules:
    ema_start, ema_end = optimization["ema"]
    return Schedules(
        total_steps=total_steps, warmup_steps=optimization["warmup_steps"], lr=optimization["lr"],
        start_lr=optimization["start_lr"], final_lr=optimization["final_lr"], weight_decay=optimization["weight_decay"],
        final_weight_decay=optimization["final_weight_decay"], ema_momentum=ema_start, final_ema_momentum=ema_end,
        ipe_scale=optimization["ipe_scale"],
    )


@pytest.fixture(scope="module", params=fixture_names())
def replay(request):
    """Run the fixture's steps; returns (fixture JSON, stored tensors, trained model, per-step results)."""
    name = request.param
    fixture = json.loads((OFFICIAL / f"{name}_trajectory.json").read_text())
    with safe_open(OFFICIAL / f"{name}_trajectory.safetensors", "pt") as file:
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    numbers, optimization = fixture["model"], fixture["optimization"]
    assert not optimization["amsgrad"] and not optimization["mixed_precision"]

    model = convert_checkpoint(
        OFFICIAL / fixture["init_checkpoint"], numbers["num_attention_heads"], numbers["predictor_num_attention_heads"],
        num_frames=numbers.get("num_frames"), uniform_power=numbers.get("uniform_power"),
    )
    if "loss_exp" in optimization:
        model.config.loss_exponent = float(optimization["loss_exp"])
    model.train()
    steps_per_epoch = optimization["iterations_per_epoch"]
    total_steps = steps_per_epoch * optimization["epochs"]
    assert total_steps == fixture["data"]["steps"]
    schedules = schedules_of(optimization, total_steps)
    clip = optimization.get("clip_grad")
    step = PretrainingStep(
        Accelerator(cpu=True), model, build_optimizer(model, optimization["lr"], tuple(optimization["betas"]),
                                                      optimization["eps"]),
        schedules, max_grad_norm=clip, clip_grad_after_epoch=optimization["warmup_epochs"] if clip else None,
    )
    results = []
    for index in range(total_steps):
        result = step(step_inputs(tensors, numbers, index), step=index + 1, epoch=index // steps_per_epoch)
        results.append(result)
    step.raise_if_nonfinite()
    return fixture, tensors, model, results


def test_schedule_length_is_the_reference_one(replay):
    fixture, _, _, _ = replay
    optimization = fixture["optimization"]
    schedules = schedules_of(optimization, fixture["data"]["steps"])
    assert schedules.schedule_steps == optimization["schedule_total_steps_T"]


@pytest.mark.parametrize("name", ["lr", "weight_decay", "momentum"])
def test_every_step_uses_the_reference_schedule_values(replay, name):
    _, tensors, _, results = replay
    ours = torch.tensor([getattr(result, name) for result in results], dtype=torch.float64)
    torch.testing.assert_close(ours, tensors[name].double(), rtol=SCHEDULE_RTOL, atol=0)


def test_every_step_has_the_reference_loss(replay):
    _, tensors, _, results = replay
    ours = torch.stack([result.loss.detach() for result in results])
    torch.testing.assert_close(ours, tensors["loss"], rtol=0, atol=LOSS_ATOL)


def test_clipping_happens_at_the_reference_steps(replay):
    _, tensors, _, results = replay
    expected = tensors["clipped"].tolist() if "clipped" in tensors else [False] * len(results)
    assert [result.clipped for result in results] == expected


@pytest.mark.parametrize("network", ["encoder", "predictor", "target_encoder"])
def test_final_weights_match_the_reference(replay, network):
    _, tensors, model, _ = replay
    prefix = f"final.{network}."
    reference = strip_prefix({key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)})
    converted = convert_predictor(reference) if network == "predictor" else convert_encoder(reference)
    ours = model.state_dict()
    ours_prefix = {"encoder": "context_encoder", "predictor": "predictor", "target_encoder": "target_encoder"}[network]
    ours = {key[len(ours_prefix) + 1:]: value for key, value in ours.items() if key.startswith(ours_prefix + ".")}
    assert set(converted) == set(ours)
    worst = max((ours[key] - value).abs().max().item() for key, value in converted.items())
    assert worst <= WEIGHT_ATOL, f"{network}: largest difference {worst:.2e}"
