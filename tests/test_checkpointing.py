# SPDX-License-Identifier: Apache-2.0
"""No silent garbage from a damaged or mismatched state: strict loading for resume, probing and conversion; no
non-finite checkpoint is ever written and `latest` skips damaged ones; a resume must continue the same run.

Tiny CPU runs (a 2-block ViT of width 32 on 64 CIFAR-10 photos), as in tests/test_run_pretraining.py.
"""

import json
import logging
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import run_pretraining
from modeling_ijepa import IJepaForPreTraining
from modeling_ijepa.conversion.ijepa import convert_checkpoint
from modeling_ijepa.training.checkpointing import (
    CheckpointError,
    NonFiniteStateError,
    latest_checkpoint,
    list_checkpoints,
)

from .conftest import OFFICIAL, require
from .test_run_pretraining import cifar_args, pretraining_weights

STEPS = ["--max_train_steps", "2", "--checkpointing_steps", "1"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished 2-step run with checkpoint-1 and checkpoint-2; tests copy it before they change anything."""
    output_dir = tmp_path_factory.mktemp("trained")
    run_pretraining.main(cifar_args(output_dir, *STEPS))
    return output_dir


@pytest.fixture
def run_copy(trained_run, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(trained_run, output_dir)
    return output_dir


def resume(output_dir, *extra, steps="2"):
    return run_pretraining.main(cifar_args(output_dir, "--max_train_steps", steps, "--checkpointing_steps", "1",
                                           "--resume_from_checkpoint", "latest", *extra))


def rewrite(path, keep=lambda name: True, change=lambda name, tensor: tensor):
    tensors = load_file(path)
    save_file({name: change(name, tensor) for name, tensor in tensors.items() if keep(name)}, path, metadata={"format": "pt"})


# ------------------------------------------------------------------------------------ 1. strict loading


def test_resuming_a_checkpoint_without_some_tensors_is_refused_naming_the_file(run_copy):
    weights = run_copy / "checkpoint-2" / "model.safetensors"
    rewrite(weights, keep=lambda name: not name.startswith("predictor."))
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(weights))}: \d+ missing tensors \(predictor\."):
        resume(run_copy)


def test_probing_a_folder_without_its_tensors_is_refused(run_copy):
    from modeling_ijepa.evaluation.arguments import parse_args
    from modeling_ijepa.evaluation.encoders import load_encoder

    save_file({}, run_copy / "model.safetensors", metadata={"format": "pt"})  # the exported encoder, emptied
    args = parse_args(["--model_name_or_path", str(run_copy), "--output_dir", str(run_copy / "probe")])
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(run_copy))}: \d+ missing tensors"):
        load_encoder(args)
    # The pretraining folder next to it loads (its context encoder and predictor are left out on purpose).
    args.model_name_or_path = str(run_copy / "pretraining")
    load_encoder(args)


@pytest.fixture
def reference_checkpoint():
    return torch.load(require(OFFICIAL / "ijepa_official_tiny.pth.tar"), weights_only=True)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda checkpoint: checkpoint.pop("target_encoder"),
         r"lacks the target_encoder state dict\(s\) \(its entries are \['batch_size', 'encoder'"),
        (lambda checkpoint: checkpoint["predictor"].pop("module.predictor_embed.weight"),
         r"Cannot convert .*: it lacks the tensor 'predictor_embed.weight'"),
        (lambda checkpoint: checkpoint["encoder"].update({"module.blocks.0.attn.extra.weight": torch.zeros(1)}),
         r"its `encoder` holds tensors that the conversion does not know: blocks.0.attn.extra.weight"),
        (lambda checkpoint: checkpoint["target_encoder"]["module.norm.weight"].fill_(float("nan")),
         r"1 tensors of its `target_encoder` are not finite \(module.norm.weight\)"),
    ],
    ids=["no-target-encoder", "missing-tensor", "unknown-tensor", "nan"],
)
def test_converting_a_damaged_reference_checkpoint_is_refused_naming_the_file(tmp_path, reference_checkpoint, damage, message):
    damage(reference_checkpoint)
    path = tmp_path / "damaged.pth.tar"
    torch.save(reference_checkpoint, path)
    with pytest.raises(CheckpointError, match=message) as raised:
        convert_checkpoint(path, num_attention_heads=4)
    assert str(path) in str(raised.value)


# ------------------------------------------------------------------------ 2. non-finite state is never written

@pytest.mark.parametrize("on_nonfinite_loss", ["error", "skip"])
def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch, on_nonfinite_loss):
    """A step whose loss is finite leaves a non-finite weight (as a diverging run does): the checkpoint of that step
    is refused, and the only checkpoint kept (--checkpoints_total_limit 1) is the last good one."""
    real_update = IJepaForPreTraining.update_target_encoder
    updates = []

    def update_then_poison(self, momentum):
        real_update(self, momentum)
        updates.append(momentum)
        if len(updates) == 2:
            with torch.no_grad():
                self.predictor.embed.weight[0, 0] = float("nan")

    monkeypatch.setattr(IJepaForPreTraining, "update_target_encoder", update_then_poison)
    with pytest.raises(NonFiniteStateError, match=r"Not writing .*checkpoint-2: 1 of \d+ tensors are not finite "
                                                  r"\(model: predictor.embed.weight\)"):
        run_pretraining.main(cifar_args(tmp_path, "--max_train_steps", "4", "--checkpointing_steps", "1",
                                        "--checkpoints_total_limit", "1", "--on_nonfinite_loss", on_nonfinite_loss))
    assert list_checkpoints(tmp_path) == [tmp_path / "checkpoint-1"] == [latest_checkpoint(tmp_path)]
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert all(torch.isfinite(tensor).all() for tensor in load_file(tmp_path / "checkpoint-1" / name).values())
    assert not (tmp_path / "pretraining").exists()


def test_save_checkpoint_refuses_non_finite_weights_and_keeps_the_previous_checkpoint(run_copy):
    from benchmarks.kill_resume import fresh_model_and_optimizer
    from modeling_ijepa.training.checkpointing import save_checkpoint

    model, optimizer = fresh_model_and_optimizer(cifar_args(run_copy))
    with torch.no_grad():
        model.predictor.embed.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteStateError, match=r"Not writing .*checkpoint-3: 1 of \d+ tensors are not finite "
                                                  r"\(model: predictor.embed.weight\)"):
        save_checkpoint(run_copy, 3, model, optimizer, {"global_step": 3}, total_limit=1)
    assert [path.name for path in list_checkpoints(run_copy)] == ["checkpoint-1", "checkpoint-2"]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda folder: (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:5]),
         "model.safetensors is not a readable safetensors file: .*header too small"),
        (lambda folder: (folder / "optimizer.safetensors").write_bytes((folder / "optimizer.safetensors").read_bytes()[:-100]),
         "optimizer.safetensors is not a readable safetensors file"),
        (lambda folder: rewrite(folder / "model.safetensors", change=lambda name, t: t * float("nan")
                                if name.startswith("context_encoder.layers.0.") else t),
         r"model.safetensors: \d+ of \d+ tensors are not finite \(context_encoder.layers.0"),
        (lambda folder: rewrite(folder / "optimizer.safetensors", keep=lambda name: not name.startswith("3.")),
         r"optimizer.safetensors does not hold the tensors that optimizer.json lists \(missing: 3.exp_avg"),
        (lambda folder: (folder / "optimizer.json").unlink(), "not a complete checkpoint folder: no optimizer.json"),
    ],
    ids=["truncated-model", "truncated-optimizer", "nan-weights", "missing-optimizer-tensors", "missing-file"],
)
def test_latest_skips_a_checkpoint_that_does_not_verify_and_says_why(run_copy, caplog, damage, reason):
    damage(run_copy / "checkpoint-2")
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(run_copy) == run_copy / "checkpoint-1"
    assert re.search(f"Skipping checkpoint-2: .*{reason}", caplog.text), caplog.text
    # Named explicitly, the damaged checkpoint is refused with the same reason, naming the file.
    with pytest.raises(CheckpointError, match=reason):
        run_pretraining.main(cifar_args(run_copy, *STEPS, "--resume_from_checkpoint", str(run_copy / "checkpoint-2")))


def test_a_resume_falls_back_past_a_truncated_checkpoint_and_ends_like_an_uninterrupted_run(trained_run, run_copy):
    weights = run_copy / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5])
    state = resume(run_copy)  # from checkpoint-1: trains step 2 again
    assert state["global_step"] == 2
    expected = json.loads((trained_run / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert state["log_history"] == expected
    reference = pretraining_weights(trained_run / "pretraining")
    for name, value in pretraining_weights(run_copy / "pretraining").items():
        assert torch.equal(value, reference[name]), name


def test_latest_refuses_when_no_checkpoint_verifies(run_copy):
    for step in (1, 2):
        (run_copy / f"checkpoint-{step}" / "optimizer.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"No checkpoint in .* can be resumed: .*optimizer.json is not a readable JSON"):
        latest_checkpoint(run_copy)


# ------------------------------------------------------------------------------- 4. a resume continues the run


@pytest.mark.parametrize(
    "extra, change",
    [
        (["--per_device_train_batch_size", "8"], "global_batch_size: 16 -> 8"),
        (["--seed", "1"], "seed: 0 -> 1"),
        (["--num_attention_heads", "4"], "model.num_attention_heads: 2 -> 4"),
        (["--max_train_samples", "48"], "data.size: 64 -> 48"),
        (["--target_scale", "0.1,0.2"], "arguments.target_scale: [0.15, 0.2] -> [0.1, 0.2]"),
    ],
    ids=["batch-size", "seed", "heads", "data", "masking"],
)
def test_resuming_with_a_changed_run_is_refused_with_a_diff(run_copy, extra, change):
    with pytest.raises(CheckpointError, match="was written by a different run") as raised:
        resume(run_copy, *extra)
    assert change in str(raised.value) and "--allow_changed_run" in str(raised.value), raised.value
    assert [path.name for path in list_checkpoints(run_copy)] == ["checkpoint-1", "checkpoint-2"]


def test_resuming_with_more_steps_is_a_changed_run_that_can_be_allowed_and_is_logged(run_copy, caplog):
    with pytest.raises(CheckpointError, match=r"schedules.total_steps: 2 -> 4"):
        resume(run_copy, steps="4")
    # Also a counter beyond the new, shorter schedule is refused, and with the flag too.
    with pytest.raises(CheckpointError, match=r"global_step is 2; this run needs an integer in \[0, 1\]"):
        resume(run_copy, "--allow_changed_run", steps="1")
    with caplog.at_level(logging.WARNING):
        state = resume(run_copy, "--allow_changed_run", steps="4")
    assert state["global_step"] == 4
    assert "with changed settings (--allow_changed_run)" in caplog.text and "schedules.total_steps: 2 -> 4" in caplog.text
    # The checkpoints written since hold the new fingerprint: resuming them again needs no flag.
    stored = json.loads((run_copy / "checkpoint-4" / "trainer_state.json").read_text())["run"]
    assert stored["schedules"]["total_steps"] == 4


@pytest.mark.parametrize(
    "counter, value, message",
    [
        ("global_step", -5, r"global_step is -5; this run needs an integer in \[0, 2\]"),
        ("global_step", 10**12, r"global_step is 1000000000000; this run needs an integer in \[0, 2\]"),
        ("batches_in_epoch", 9, r"batches_in_epoch is 9; this run needs an integer in \[0, 4\]"),
        ("epoch", "0", r"epoch is '0'; this run needs a non-negative integer"),
    ],
)
def test_impossible_counters_are_refused(run_copy, counter, value, message):
    path = run_copy / "checkpoint-2" / "trainer_state.json"
    state = json.loads(path.read_text())
    state[counter] = value
    path.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}: {message}"):
        run_pretraining.main(cifar_args(run_copy, *STEPS, "--resume_from_checkpoint", str(run_copy / "checkpoint-2")))
