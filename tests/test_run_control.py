# SPDX-License-Identifier: Apache-2.0
"""One run per output folder, and preemption: SIGTERM or SIGUSR1 stops every process after its current step, they
write a checkpoint together and exit with `PREEMPTION_EXIT_CODE`; the resumed run ends bitwise equal to an
uninterrupted one. Real signals, to real processes: one `python run_pretraining.py`, and two processes started by
`accelerate launch --multi_gpu` (torchrun, gloo on CPU).
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import run_pretraining
from benchmarks.kill_resume import RUN_ENV, tail
from modeling_ijepa.training.checkpointing import list_checkpoints
from modeling_ijepa.training.run_control import LOCK_FILE, PREEMPTION_EXIT_CODE, OutputDirInUseError, OutputDirLock

from .conftest import REPO_ROOT, free_port
from .test_run_pretraining import assert_same_weights, cifar_args

# The same thread count in every process, so that an interrupted run and an uninterrupted one compute bitwise alike.
SCRIPT_ENV = RUN_ENV | {"PYTHONPATH": str(REPO_ROOT)}


def start(command: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=os.environ | SCRIPT_ENV, stdout=log, stderr=subprocess.STDOUT)

# ------------------------------------------------------------------------------------------ the folder lock


def test_the_output_folder_lock_is_exclusive_and_released(tmp_path):
    with OutputDirLock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(OutputDirInUseError, match=rf"--output_dir {tmp_path} is in use by another run \(process "
                                                      rf"{os.getpid()}, which holds {tmp_path / LOCK_FILE}\)"):
            OutputDirLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_FILE).exists()
    with OutputDirLock(tmp_path):
        pass


def test_a_lock_left_by_a_killed_process_is_stale(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from modeling_ijepa.training.run_control import OutputDirLock; "
         f"lock = OutputDirLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(600)"],
        cwd=REPO_ROOT, env=os.environ | SCRIPT_ENV, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirInUseError, match=f"process {holder.pid}"):
            OutputDirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / LOCK_FILE).exists()  # kill -9 left the file, but the operating system released the lock
    with OutputDirLock(tmp_path):
        pass


# ---------------------------------------------------------------------------------------------- preemption


def wait_for_step(step: int, total: int, log_path, process, timeout: float = 300.0) -> None:
    """Wait until the progress bar in the log of `process` shows at least `step` of `total` optimizer steps."""
    deadline = time.monotonic() + timeout
    while max(map(int, re.findall(rf"(\d+)/{total} \[", log_path.read_text(errors="replace"))), default=0) < step:
        assert process.poll() is None, f"exited ({process.returncode}) before step {step}:\n{tail(log_path)}"
        assert time.monotonic() < deadline, f"step {step} not reached in {timeout}s:\n{tail(log_path)}"
        time.sleep(0.01)


def kill_leftovers(*processes: subprocess.Popen) -> None:
    """Kill and reap whichever of `processes` still runs (a failed assertion must not leave runs behind)."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_checkpoints_and_exits_for_requeue_then_the_resumed_run_is_bitwise_equal(tmp_path):
    """One process. Also: while it runs, a second run in its --output_dir is refused."""
    steps = 150  # about 25 ms each: the signal lands mid-run
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    argv = ["run_pretraining.py", *cifar_args(interrupted, "--max_train_steps", str(steps), "--resume_from_checkpoint",
                                              "latest")]
    baseline = start([sys.executable, "run_pretraining.py", *cifar_args(uninterrupted, "--max_train_steps", str(steps))],
                     tmp_path / "uninterrupted.log")
    first = start([sys.executable, *argv], tmp_path / "first.log")
    try:
        wait_for_step(3, steps, tmp_path / "first.log", first)
        with pytest.raises(OutputDirInUseError, match=f"is in use by another run \\(process {first.pid}"):
            run_pretraining.main(argv[1:])
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=300) == PREEMPTION_EXIT_CODE, tail(tmp_path / "first.log")
        assert baseline.wait(timeout=600) == 0, tail(tmp_path / "uninterrupted.log")
    finally:
        kill_leftovers(baseline, first)
    # Checkpointed although --checkpointing_steps is not set, and not exported: the run is not over.
    checkpoints = list_checkpoints(interrupted)
    assert len(checkpoints) == 1 and 0 < int(checkpoints[0].name.split("-")[1]) < steps, checkpoints
    assert "Stopped by SIGTERM after step" in tail(tmp_path / "first.log")
    assert not (interrupted / "pretraining").exists() and not (interrupted / LOCK_FILE).exists()

    resumed = subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, env=os.environ | SCRIPT_ENV, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(interrupted / "pretraining", uninterrupted / "pretraining")
    logs = [(folder / "training_log.jsonl").read_text() for folder in (uninterrupted, interrupted)]
    assert logs[0] == logs[1]


def launch_two(output_dir, log_path, *extra) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "run_pretraining.py",
        *cifar_args(output_dir, "--per_device_train_batch_size", "8", *extra),
    ]
    return start(command, log_path)


def worker_of_rank(launcher: subprocess.Popen, rank: int, timeout: float = 60.0) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "run_pretraining.py" in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no worker of rank {rank}")


def test_two_processes_stop_together_when_only_one_is_signalled_and_resume_bitwise(tmp_path):
    """SIGUSR1 to rank 1 alone: rank 0 learns it at the next step's all-reduce, both save one checkpoint and
    exit with PREEMPTION_EXIT_CODE (torchrun then reports a failed worker). The resumed pair ends where an
    uninterrupted pair does."""
    steps = 60
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    baseline = launch_two(uninterrupted, tmp_path / "uninterrupted.log", "--max_train_steps", str(steps))
    first = launch_two(interrupted, tmp_path / "first.log", "--max_train_steps", str(steps),
                       "--resume_from_checkpoint", "latest")
    try:
        wait_for_step(3, steps, tmp_path / "first.log", first)
        worker_of_rank(first, 1).send_signal(signal.SIGUSR1)
        assert first.wait(timeout=300) == 1  # torchrun's code for failed workers, whatever their own codes
        assert baseline.wait(timeout=600) == 0, tail(tmp_path / "uninterrupted.log")
    finally:
        kill_leftovers(baseline, first)
    log = (tmp_path / "first.log").read_text(errors="replace")
    assert "Stopped by a signal to another process after step" in log, log[-4000:]  # rank 0's message
    assert f"exitcode: {PREEMPTION_EXIT_CODE}" in log, log[-4000:]  # torchrun's report of both workers
    checkpoints = list_checkpoints(interrupted)
    assert len(checkpoints) == 1 and 0 < int(checkpoints[0].name.split("-")[1]) < steps, checkpoints
    assert not (interrupted / "pretraining").exists()

    resumed = launch_two(interrupted, tmp_path / "resumed.log", "--max_train_steps", str(steps),
                         "--resume_from_checkpoint", "latest")
    assert resumed.wait(timeout=600) == 0, tail(tmp_path / "resumed.log")
    assert_same_weights(interrupted / "pretraining", uninterrupted / "pretraining")
    logs = [(folder / "training_log.jsonl").read_text() for folder in (uninterrupted, interrupted)]
    assert logs[0] == logs[1]


# ------------------------------------------------------------------------------------------ the end of a process

# A command's entry point: logs and prints, registers a step of the interpreter's finalization (an atexit function),
# then returns or raises.
ENTRY_POINT_SCRIPT = """
import atexit, logging, sys
from modeling_ijepa.cli import configure_logging, run_entry_point

def main():
    configure_logging()
    atexit.register(lambda: print("finalized", flush=True))
    logging.getLogger("command").info("logged")
    sys.stdout.write("printed, unflushed")
    if sys.argv[1] == "raise":
        raise RuntimeError("the run failed")
    if sys.argv[1] == "exit":
        sys.exit(75)  # as a preempted run does

run_entry_point(main)
"""


@pytest.mark.parametrize("world_size", ["1", "2"])
@pytest.mark.parametrize("outcome", ["return", "exit", "raise"])
def test_a_distributed_process_ends_without_finalizing_after_main_returns(world_size, outcome):
    result = subprocess.run([sys.executable, "-c", ENTRY_POINT_SCRIPT, outcome], cwd=REPO_ROOT,
                            env=os.environ | SCRIPT_ENV | {"WORLD_SIZE": world_size}, capture_output=True, text=True)
    # Output and logs are flushed in every case.
    assert "printed, unflushed" in result.stdout and "INFO command: logged" in result.stderr
    if outcome == "raise":  # an error propagates as usual, through the interpreter's finalization
        assert result.returncode == 1 and "RuntimeError: the run failed" in result.stderr
        assert "finalized" in result.stdout
    else:  # an end on purpose: a process of a distributed run skips the finalization, a lone process does not
        assert result.returncode == (75 if outcome == "exit" else 0), result.stderr
        assert ("finalized" in result.stdout) == (world_size == "1")
