# SPDX-License-Identifier: Apache-2.0
"""The pretraining model card (`modeling_ijepa.hub.model_card`, `modeling_ijepa.hub.pretraining_card` and its template),
rendered from small fake values: no training needed."""

import re
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import run_pretraining
from modeling_ijepa.data.pipeline import input_grid
from modeling_ijepa.hub.model_card import plot_training_curves, plural, write_model_card
from modeling_ijepa.hub.pretraining_card import MODEL_CARD_TEMPLATE, card_contents
from modeling_ijepa.training.models import build_model
from modeling_ijepa.training.pretraining import build_schedules


@pytest.mark.parametrize(
    "count, noun, expected",
    [(1, "process", "1 process"), (2, "process", "2 processes"), (0, "block", "0 blocks"),
     (10_000, "image", "10,000 images"), (1, "optimizer step", "1 optimizer step")],
)  # fmt: skip
def test_plural(count, noun, expected):
    assert plural(count, noun) == expected


def render_card(tmp_path, *arguments, num_processes=1, global_step=1, num_examples=1):
    args = run_pretraining.parse_args(
        ["--output_dir", str(tmp_path), "--hidden_size", "96", "--num_hidden_layers", "6", "--num_attention_heads",
         "1", "--predictor_hidden_size", "48", "--predictor_num_hidden_layers", "1", "--warmup_steps", "1", *arguments]
    )  # fmt: skip
    accelerator = SimpleNamespace(num_processes=num_processes, mixed_precision="no")
    state = {"global_step": global_step, "images_seen": global_step * num_processes, "batches_per_epoch": 1,
             "log_history": [{"step": global_step, "loss": 0.5}], "wall_clock": 60.0}  # fmt: skip
    global_batch = args.per_device_train_batch_size * num_processes * args.gradient_accumulation_steps
    config = build_model(args).config
    data = SimpleNamespace(description="fake images", num_examples=num_examples, grid=input_grid(config))
    values, card_data = card_contents(
        args, accelerator, state, data, config, global_batch, build_schedules(args, steps_per_epoch=max(1, global_step))
    )
    return write_model_card(tmp_path, MODEL_CARD_TEMPLATE, values, card_data).text


def test_card_states_each_fact_once_with_singular_counts(tmp_path):
    text = render_card(tmp_path, "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1")

    # The encoder's size appears once, not as "ViT (width 96, depth 6): width 96, 6 blocks".
    assert len(re.findall(r"width 96\b", text)) == 1 and "depth 6" not in text
    assert "| encoder | ViT: width 96, 6 blocks, 1 head, patch 16" in text
    assert "| predictor | width 48, 1 block |" in text
    assert "| global batch | 1 (1 process x 1 per device x 1 accumulation step) |" in text
    assert "1 optimizer step, 1 image seen" in text and "(1 example)" in text and "(warmup 1 step)" in text
    assert not re.search(r"\b1 (processes|blocks|heads|steps|images|examples)\b", text)


def test_card_reports_the_schedule_values_the_steps_used(tmp_path):
    text = render_card(tmp_path, "--learning_rate", "1e-3", "--final_lr", "1e-6", global_step=4)
    # Step 1 is the end of a one-step warmup (the peak), and step 4 of 4 reaches the final learning rate.
    assert "learning rate 0.001 at step 1, 0.001 at the end of the linear warmup" in text
    assert "1e-06 at the last step" in text and "weight decay 0.0927 -> 0.4" in text
    assert "EMA momentum 0.996 at step 1 -> 0.999 at the last step" in text


def test_card_counts_in_the_plural(tmp_path):
    text = render_card(tmp_path, "--gradient_accumulation_steps", "2", num_processes=2, global_step=3, num_examples=64)
    assert "2 processes x" in text and "x 2 accumulation steps)" in text
    assert "3 optimizer steps, 6 images seen" in text and "(64 examples)" in text


def test_loss_plot_of_a_run_that_logged_once_shows_its_point(tmp_path):
    """A line through one point draws nothing: the loss panel of a one-entry log must still show it."""
    path = plot_training_curves([{"step": 1, "loss": 0.5}], tmp_path / "curves.png")
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    loss_panel = pixels[:, : pixels.shape[1] // 2]
    loss_colour = (31, 119, 180)  # matplotlib's "tab:blue", the loss curve's colour
    assert (np.abs(loss_panel - loss_colour).sum(axis=-1) < 30).sum() > 20
