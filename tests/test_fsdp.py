# SPDX-License-Identifier: Apache-2.0
"""FSDP2 training and sharded checkpoints (training/sharding.py, training/sharded_checkpointing.py) on CPU, over gloo.

`tests/scripts/fsdp_train.py` trains a tiny I-JEPA through `PretrainingStep` on fixed CIFAR-10 batches, on 1 or 2
processes: once through `accelerate launch --config_file configs/accelerate/fsdp2_cpu.yaml` (FSDP2, then DDP, in the
same processes), and otherwise one process per rank started here, so that a test can SIGKILL every one of them
inside a sharded checkpoint write. Checked:
  - the CPU config really shards (every parameter a DTensor), the EMA update runs on local shards with no
    collective, and FSDP2 ends with the same target encoder as DDP;
  - a kill during a sharded write leaves only complete checkpoints; the resumed run restores the saved state
    bitwise on 2 and on 1 processes (2 -> 2, 2 -> 1, 1 -> 2), and ends bitwise equal to the uninterrupted run on the
    same number of processes, within 1e-5 of it on another;
  - checkpoints hold safetensors and JSON only, the newest K are kept, and bad inputs fail with clear errors
    (another model size, a truncated shard, no torch.distributed, a diverged state).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
from torch.distributed.tensor import DTensor

from modeling_ijepa import IJepaConfig, IJepaForPreTraining
from modeling_ijepa.training.checkpointing import (
    TEMPORARY_PREFIX,
    CheckpointError,
    CheckpointWriteError,
    NonFiniteStateError,
    list_checkpoints,
)
from modeling_ijepa.training.optimization import build_optimizer
from modeling_ijepa.training.sharded_checkpointing import (
    SHARDED_MANIFEST,
    flat_state,
    latest_sharded_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
    verify_sharded_checkpoint,
)
from modeling_ijepa.training.sharding import check_ema_is_local, shard_model, unsharded_copy

from .conftest import CIFAR10, REPO_ROOT, free_port, require

SCRIPT = REPO_ROOT / "tests" / "scripts" / "fsdp_train.py"
CPU_CONFIG = REPO_ROOT / "configs" / "accelerate" / "fsdp2_cpu.yaml"
# One thread per process, in every run: two processes share the 2 cores, and equal thread counts compute alike.
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
# What `accelerate launch` exports from fsdp2_cpu.yaml, for the processes started here one by one.
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
            "FSDP_TRANSFORMER_CLS_TO_WRAP": "IJepaLayer", "FSDP_RESHARD_AFTER_FORWARD": "true"}
STEPS, EVERY, KEEP = 6, 2, 2
TOLERANCE = 1e-5
RUN = {"model": "tiny", "seed": 0, "global_batch_size": 8, "batches_per_epoch": 100,  # as in the script
       "schedules": {"total_steps": STEPS}}
TINY = {"image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "predictor_hidden_size": 16, "predictor_num_hidden_layers": 1,
        "predictor_num_attention_heads": 2}


def tail(log: Path, size: int = 4000) -> str:
    return log.read_text(errors="replace")[-size:] if log.exists() else "(no log)"


def rank_log(log: Path, rank: int) -> str:
    return tail(log.with_suffix(f".rank{rank}.log"))


def script_args(images: Path, work: Path, name: str, *extra: str) -> list[str]:
    return [str(SCRIPT), "--images", str(images), "--output_dir", str(work / "run"),
            "--result", str(work / f"{name}.json"), "--checkpoint_every", str(EVERY), "--total_limit", str(KEEP),
            "--steps", str(STEPS), "--dump_state", str(work / "dumps"), *extra]


def start_ranks(world_size: int, args: list[str], log: Path) -> list[subprocess.Popen]:
    """One process per rank, joined through the environment variables that torchrun would set."""
    port, processes = str(free_port()), []
    for rank in range(world_size):
        env = {**os.environ, **ENV, **FSDP_ENV, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port}
        with open(log.with_suffix(f".rank{rank}.log"), "w") as output:
            processes.append(subprocess.Popen([sys.executable, *args], env=env, stdout=output,
                                              stderr=subprocess.STDOUT))
    return processes


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def wait_all(processes: list[subprocess.Popen], log: Path, timeout: float = 240) -> None:
    """Wait for every rank to finish and succeed; on a failure or a timeout, kill the others (never leave a rank
    waiting for a peer that is gone)."""
    deadline = time.monotonic() + timeout
    try:
        for rank, process in enumerate(processes):
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"rank {rank} did not finish:\n{rank_log(log, rank)}") from None
            assert process.returncode == 0, f"rank {rank} failed:\n{rank_log(log, rank)}"
    finally:
        stop(processes)


def kill_when_held(processes: list[subprocess.Popen], signal_file: Path, log: Path, timeout: float = 240) -> dict:
    """Wait until the run holds its checkpoint write open (it writes `signal_file`), then SIGKILL every process."""
    deadline = time.monotonic() + timeout
    try:
        while not signal_file.is_file():
            for rank, process in enumerate(processes):
                assert process.poll() is None, f"rank {rank} exited before the kill point:\n{rank_log(log, rank)}"
            assert time.monotonic() < deadline, f"kill point not reached:\n{rank_log(log, 0)}"
            time.sleep(0.05)
        for process in processes:
            process.send_signal(signal.SIGKILL)
    finally:
        stop(processes)
    return json.loads(signal_file.read_text())


def run_ranks(world_size: int, args: list[str], log: Path) -> None:
    wait_all(start_ranks(world_size, args, log), log)


def assert_bitwise(expected: dict, actual: dict, what: str) -> None:
    assert set(expected) == set(actual), what
    differ = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert not differ, f"{what}: {len(differ)} tensors differ ({differ[:3]})"


def max_difference(expected: dict, actual: dict, prefix: str = "") -> float:
    assert set(expected) == set(actual)
    return max((expected[name] - actual[name]).abs().max().item() for name in expected if name.startswith(prefix))


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """32 CIFAR-10 training images at 16x16 (2x2 average pooling), normalised, as one safetensors file."""
    from datasets import load_dataset

    rows = load_dataset(str(require(CIFAR10)), split="train[:32]")
    pixels = torch.stack([torch.from_numpy(np.asarray(row["img"], dtype=np.float32)).permute(2, 0, 1)
                          for row in rows]) / 255.0
    path = tmp_path_factory.mktemp("fsdp-data") / "images.safetensors"
    save_file({"pixel_values": ((F.avg_pool2d(pixels, 2) - 0.5) / 0.25).contiguous()}, path)
    return path


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> dict:
    """The uninterrupted runs: `accelerate launch` with the CPU config, 2 processes, FSDP2 (checkpoints every 2
    steps, the newest 2 kept) then DDP. Returns the work folder and the result file's content."""
    work = tmp_path_factory.mktemp("fsdp-reference")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG),
               "--main_process_port", str(free_port()),
               *script_args(images, work, "result", "--sharding", "both", "--count_ema_collectives")]
    log = work / "launch.log"
    with open(log, "w") as output:
        completed = subprocess.run(command, env={**os.environ, **ENV}, stdout=output, stderr=subprocess.STDOUT,
                                   timeout=300, check=False)
    assert completed.returncode == 0, tail(log)
    return {"work": work, "result": json.loads((work / "result.json").read_text())}


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group in this process, for what needs torch.distributed without starting processes."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def tiny_model(**overrides) -> IJepaForPreTraining:
    torch.manual_seed(0)
    return IJepaForPreTraining(IJepaConfig(**{**TINY, **overrides}))


def sharded_tiny(**overrides) -> tuple[IJepaForPreTraining, torch.optim.Optimizer]:
    model = shard_model(tiny_model(**overrides))
    return model, build_optimizer(model, lr=1e-3)


# ------------------------------------------------------------------- 1. FSDP2 through the CPU config, against DDP


def test_the_cpu_config_shards_with_fsdp2_and_ends_with_the_target_encoder_of_ddp(reference):
    result = reference["result"]
    assert result["fsdp_requested"] and result["world_size"] == 2
    # Accelerate 1.15 leaves CPU processes MULTI_CPU (DDP) whatever the config; `prepare_model_and_optimizer` then
    # shards them itself. Where Accelerate applies FSDP (GPUs), it is FSDP.
    assert result["distributed_type"] in ("DistributedType.MULTI_CPU", "DistributedType.FSDP")
    fsdp, ddp = result["fsdp"], result["ddp"]
    assert fsdp["sharded"] and fsdp["parameter_types"] == ["DTensor"]
    assert not ddp["sharded"] and ddp["parameter_types"] == ["Parameter"]
    assert fsdp["ema_collectives"] == [0] * STEPS  # every EMA update ran on the local shards alone
    sharded, replicated = load_file(fsdp["weights"]), load_file(ddp["weights"])
    initial = load_file(Path(fsdp["weights"]).with_name("result-fsdp-initial.safetensors"))
    assert_bitwise(initial, load_file(Path(ddp["weights"]).with_name("result-ddp-initial.safetensors")), "start")
    assert max_difference(sharded, replicated, "target_encoder.") < TOLERANCE
    assert max_difference(sharded, replicated) < TOLERANCE  # the context encoder and the predictor too
    assert max_difference(initial, sharded, "target_encoder.") > 100 * TOLERANCE  # the EMA did move the target


def test_sharded_checkpoints_hold_safetensors_and_json_only_and_the_newest_are_kept(reference):
    run = reference["work"] / "run"
    assert [path.name for path in list_checkpoints(run)] == ["checkpoint-4", "checkpoint-6"]
    assert not list(run.glob(f"{TEMPORARY_PREFIX}*"))
    for checkpoint in list_checkpoints(run):
        manifest = verify_sharded_checkpoint(checkpoint)  # without torch.distributed: every shard, every value
        assert manifest["world_size"] == 2 and len(manifest["shards"]) == 2
        expected = ["config.json", SHARDED_MANIFEST, "trainer_state.json", *manifest["shards"]]
        assert sorted(path.name for path in checkpoint.iterdir()) == sorted(expected)
        for path in checkpoint.iterdir():
            head = path.read_bytes()[:16]
            assert not head.startswith(b"\x80") and b"PK" not in head[:4], f"{path} is pickle or torch.save"
            if path.suffix == ".json":
                json.loads(path.read_text())
            else:
                assert path.suffix == ".safetensors" and load_file(path)
    assert latest_sharded_checkpoint(run) == run / "checkpoint-6"


# ---------------------------------------------------------------- 2. kill -9 during a sharded write, then resume


def start_resume(images, run: Path, work: Path, world_size: int) -> list[subprocess.Popen]:
    """Resume a copy of the killed run's folder `run` on `world_size` processes, in `work`."""
    shutil.copytree(run, work / "run")
    return start_ranks(world_size, script_args(images, work, "resumed", "--resume"), work / "resumed")


def check_resumed(processes: list[subprocess.Popen], work: Path, saved: dict) -> dict:
    """Wait for a resumed run; check that it restored the state `saved` at checkpoint-2 bitwise and kept its own
    checkpoints in order; returns its final weights."""
    wait_all(processes, work / "resumed")
    result = json.loads((work / "resumed.json").read_text())
    assert result["world_size"] == len(processes) and result["fsdp"]["first_step"] == 3
    restored = load_file(work / "dumps" / "resumed-2.safetensors")
    assert_bitwise(saved, restored, f"the state restored on {len(processes)} processes")
    assert [path.name for path in list_checkpoints(work / "run")] == ["checkpoint-4", "checkpoint-6"]
    assert not list((work / "run").glob(f"{TEMPORARY_PREFIX}*"))  # the killed write's folder is gone
    return load_file(result["fsdp"]["weights"])


def test_a_kill_while_2_processes_write_shards_resumes_on_2_bitwise_and_on_1(images, reference, tmp_path):
    signal_file, log = tmp_path / "held.json", tmp_path / "killed"
    hold = ["--hold", "shards:4", "--signal", str(signal_file)]
    hit = kill_when_held(start_ranks(2, script_args(images, tmp_path, "killed", *hold), log), signal_file, log)
    assert hit["phase"] == "shards" and hit["step"] == 4
    run = tmp_path / "run"
    assert (run / f"{TEMPORARY_PREFIX}4-sharded").is_dir() and not (run / "checkpoint-4").exists()
    assert [path.name for path in list_checkpoints(run)] == ["checkpoint-2"]
    assert latest_sharded_checkpoint(run) == run / "checkpoint-2"
    saved = load_file(tmp_path / "dumps" / "saved-2.safetensors")
    uninterrupted = load_file(reference["result"]["fsdp"]["weights"])
    # Both resumptions at once: 3 processes on 2 cores, one thread each.
    resumed = {size: start_resume(images, run, tmp_path / f"resume-on-{size}", size) for size in (2, 1)}
    try:
        same = check_resumed(resumed[2], tmp_path / "resume-on-2", saved)
        fewer = check_resumed(resumed[1], tmp_path / "resume-on-1", saved)
    finally:
        for processes in resumed.values():
            stop(processes)
    assert_bitwise(uninterrupted, same, "2 -> 2 against the uninterrupted run")
    assert max_difference(uninterrupted, fewer) < TOLERANCE


def test_a_kill_before_the_rename_of_a_1_process_checkpoint_resumes_on_2(images, reference, tmp_path):
    signal_file, log = tmp_path / "held.json", tmp_path / "killed"
    hold = ["--hold", "rename:4", "--signal", str(signal_file)]
    kill_when_held(start_ranks(1, script_args(images, tmp_path, "killed", *hold), log), signal_file, log)
    run = tmp_path / "run"
    temporary = run / f"{TEMPORARY_PREFIX}4-sharded"  # complete and flushed, but not yet renamed
    assert sorted(path.name for path in temporary.iterdir()) == sorted(
        ["config.json", SHARDED_MANIFEST, "trainer_state.json", "shard-00001-model-00001-of-00001.safetensors"])
    assert [path.name for path in list_checkpoints(run)] == ["checkpoint-2"]
    assert latest_sharded_checkpoint(run) == run / "checkpoint-2"
    saved = load_file(tmp_path / "dumps" / "saved-2.safetensors")
    more = check_resumed(start_resume(images, run, tmp_path / "resume-on-2", 2), tmp_path / "resume-on-2", saved)
    assert max_difference(load_file(reference["result"]["fsdp"]["weights"]), more) < TOLERANCE


# ------------------------------------------------------------------------------------------- 3. bad inputs


def test_a_sharded_checkpoint_without_torch_distributed_says_how_to_start_the_run(reference, tmp_path):
    checkpoint = reference["work"] / "run" / "checkpoint-6"
    assert not dist.is_initialized()
    message = "cannot be loaded without torch.distributed, which is not initialised.*accelerate launch.*torchrun"
    with pytest.raises(CheckpointError, match=message):
        load_sharded_checkpoint(checkpoint, tiny_model())
    model = tiny_model()
    with pytest.raises(CheckpointError, match="cannot be written without torch.distributed"):
        save_sharded_checkpoint(tmp_path, 1, model, build_optimizer(model, lr=1e-3), {"global_step": 1})
    assert not list(tmp_path.iterdir())


def test_a_sharded_checkpoint_of_2_processes_loads_on_1_and_refuses_another_model_or_run(reference, process_group):
    checkpoint = reference["work"] / "run" / "checkpoint-6"
    model, optimizer = sharded_tiny()
    state = load_sharded_checkpoint(checkpoint, model, optimizer, run=RUN)
    assert state["global_step"] == 6
    full = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    saved = load_file(reference["work"] / "dumps" / "saved-6.safetensors")
    assert_bitwise(saved, flat_state(*full)[0], "2 -> 1")
    copy = unsharded_copy(model)  # what the final export writes
    assert type(copy) is IJepaForPreTraining and not any(isinstance(p, DTensor) for p in copy.parameters())
    assert_bitwise({name: value for name, value in saved.items() if name.startswith("model.")},
                   {f"model.{name}": value for name, value in copy.state_dict().items()}, "unsharded copy")
    wider, wider_optimizer = sharded_tiny(hidden_size=48, intermediate_size=96)
    with pytest.raises(CheckpointError, match=r"another model than this run's: \d+ tensors of another shape \(model\."
                       r"context_encoder\.embeddings\.patch_embeddings\.projection\.bias is \[32\] there and \[48\]"):
        load_sharded_checkpoint(checkpoint, wider, wider_optimizer)
    deeper, _ = sharded_tiny(num_hidden_layers=3)
    with pytest.raises(CheckpointError, match=r"missing tensors \(model\.context_encoder\.layers\.2\."):
        load_sharded_checkpoint(checkpoint, deeper)
    with pytest.raises(CheckpointError, match="(?s)written by a different run.*seed: 0 -> 1"):
        load_sharded_checkpoint(checkpoint, model, optimizer, run={**RUN, "seed": 1})
    with pytest.raises(CheckpointError, match="is not a sharded checkpoint.*load_checkpoint"):
        load_sharded_checkpoint(reference["work"], model, optimizer)


def test_a_damaged_shard_is_refused_naming_it_and_latest_skips_it(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference["work"] / "run", run)
    shard = run / "checkpoint-6" / "shard-00002-model-00001-of-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=f"{shard} is not a readable checkpoint shard"):
        verify_sharded_checkpoint(shard.parent)
    assert latest_sharded_checkpoint(run) == run / "checkpoint-4"
    (run / "checkpoint-4" / "shard-00001-model-00001-of-00001.safetensors").unlink()
    with pytest.raises(CheckpointError, match="No checkpoint .* can be resumed.*holds the shard files"):
        latest_sharded_checkpoint(run)


def test_a_diverged_state_or_a_failing_disk_writes_no_checkpoint(process_group, tmp_path, monkeypatch):
    from modeling_ijepa.training import sharded_checkpointing

    output_dir = tmp_path / "run"
    model, optimizer = sharded_tiny()
    save_sharded_checkpoint(output_dir, 1, model, optimizer, {"global_step": 1})
    with torch.no_grad():
        model.context_encoder.layernorm.weight.to_local()[0] = float("nan")
    with pytest.raises(NonFiniteStateError, match="context_encoder.layernorm.weight"):
        save_sharded_checkpoint(output_dir, 2, model, optimizer, {"global_step": 2})
    with torch.no_grad():
        model.context_encoder.layernorm.weight.to_local()[0] = 1.0

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sharded_checkpointing, "publish", full_disk)
    with pytest.raises(CheckpointWriteError, match="checkpoint-3: No space left on device"):
        save_sharded_checkpoint(output_dir, 3, model, optimizer, {"global_step": 3})
    assert sorted(path.name for path in output_dir.iterdir()) == ["checkpoint-1"]


def test_the_ema_check_refuses_a_target_encoder_sharded_unlike_the_context_encoder(process_group):
    from torch.distributed.fsdp import fully_shard

    model = tiny_model()
    check_ema_is_local(model)  # unsharded: trivially local
    fully_shard(model.context_encoder)
    with pytest.raises(ValueError, match="target encoder is not sharded like the context encoder"):
        check_ema_is_local(model)


# --------------------------------------------------------------------------------- through run_pretraining.py


def launch_pretraining(output_dir: Path, num_processes: int, fsdp: bool, per_device_batch: int, *extra) -> None:
    """`accelerate launch [--config_file fsdp2_cpu.yaml] run_pretraining.py` on the tiny model and 64 CIFAR-10
    images, 6 steps, checkpointing every 2."""
    from .test_run_pretraining import TINY as TINY_ARGUMENTS

    launcher = ["--config_file", str(CPU_CONFIG)] if fsdp else ["--multi_gpu" if num_processes > 1 else "--cpu"]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", str(num_processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), str(REPO_ROOT / "run_pretraining.py"),
        "--dataset_name", str(require(CIFAR10)), "--max_train_samples", "64", "--output_dir", str(output_dir),
        "--per_device_train_batch_size", str(per_device_batch), "--max_train_steps", str(STEPS),
        "--checkpointing_steps", str(EVERY), "--checkpoints_total_limit", "5", *TINY_ARGUMENTS, *extra,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, env=os.environ | ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def exported_encoder(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_the_script_under_fsdp2_exports_the_encoder_of_ddp_and_resumes_on_another_world_size(tmp_path):
    launch_pretraining(tmp_path / "ddp", 2, False, 8)
    launch_pretraining(tmp_path / "fsdp", 2, True, 8)
    ddp, fsdp = exported_encoder(tmp_path / "ddp"), exported_encoder(tmp_path / "fsdp")
    assert ddp.keys() == fsdp.keys()
    for name, value in ddp.items():
        torch.testing.assert_close(fsdp[name], value, rtol=0, atol=TOLERANCE, msg=name)
    checkpoint = tmp_path / "fsdp" / f"checkpoint-{STEPS}"
    assert (checkpoint / SHARDED_MANIFEST).is_file() and len(list(checkpoint.glob("shard-*.safetensors"))) == 2

    # The sharded checkpoint of step 2, written by 2 processes, resumed on 1 with the same global batch (16).
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "fsdp" / f"checkpoint-{EVERY}", tmp_path / "resumed" / f"checkpoint-{EVERY}")
    launch_pretraining(tmp_path / "resumed", 1, True, 16, "--resume_from_checkpoint", "latest")
    resumed = exported_encoder(tmp_path / "resumed")
    for name, value in fsdp.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=TOLERANCE, msg=name)
    logs = [json.loads(line) for line in (tmp_path / "resumed" / "training_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logs] == list(range(1, STEPS + 1))


def test_vjepa2_trains_under_fsdp2_with_its_own_block_class_and_exports_for_stock_transformers(tmp_path):
    from transformers import AutoModel, VJEPA2Model

    from .conftest import VIDEO_TINY
    from .test_vjepa2_pretraining import DATA, SIZES

    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG),
        "--fsdp_transformer_layer_cls_to_wrap", "VJEPA2Layer", "--main_process_port", str(free_port()),
        str(REPO_ROOT / "run_pretraining.py"), *DATA, *SIZES, "--per_device_train_batch_size", "2",
        "--train_dir", str(require(VIDEO_TINY) / "unlabelled"), "--checkpointing_steps", "2",
        "--output_dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, env=os.environ | ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert len(list((tmp_path / "checkpoint-2").glob("shard-*.safetensors"))) == 2
    assert type(AutoModel.from_pretrained(tmp_path)) is VJEPA2Model
