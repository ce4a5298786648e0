# SPDX-License-Identifier: Apache-2.0
"""Kill a pretraining run with SIGKILL at chosen moments, resume it each time, and compare it with the same run
left alone: the machinery of `benchmarks.soak_kill_resume` (and of any test that wants it).

`run_with_kills(work_dir, plan, run_argv)` starts the uninterrupted run and, beside it, a chain of attempts of the
same run in one output folder, each `python -m benchmarks.held_checkpoint` resuming from the latest checkpoint.
Each attempt is started while the previous one still runs (so that its imports overlap), and released when its
turn comes; it is killed at its point of the plan (`kill_plan`): inside a checkpoint write, between the flush and
the rename, while an old checkpoint is being deleted, at a random moment after a checkpoint, or during the export.
After every kill, `on_kill` may inspect what is on disk (`assert_every_checkpoint_loads`).
"""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

from modeling_ijepa import IJepaForPreTraining
from modeling_ijepa.training.arguments import parse_args
from modeling_ijepa.training.checkpointing import TEMPORARY_PREFIX, latest_checkpoint, load_checkpoint
from modeling_ijepa.training.models import build_model
from modeling_ijepa.training.optimization import parameter_groups

REPO_ROOT = Path(__file__).resolve().parents[1]
# The same thread count in every process, so that an interrupted run and an uninterrupted one compute bitwise alike.
RUN_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
KILL_KINDS = ("write", "rename", "prune", "random", "export")
RUN_TIMEOUT = 600  # seconds for the last attempt and the uninterrupted run to finish


def step_of(checkpoint: Path | None) -> int:
    return int(checkpoint.name.split("-")[1]) if checkpoint is not None else 0


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """Every folder named like a checkpoint, complete or not, oldest first."""
    if not output_dir.is_dir():
        return []
    return sorted((path for path in output_dir.iterdir() if path.name.startswith("checkpoint-")), key=step_of)


def temporary_folders(output_dir: Path) -> list[str]:
    return sorted(path.name for path in output_dir.glob(f"{TEMPORARY_PREFIX}*"))


def pretraining_weights(folder: Path) -> dict[str, torch.Tensor]:
    return IJepaForPreTraining.from_pretrained(folder).state_dict()


def fresh_model_and_optimizer(argv: list[str]):
    args = parse_args(argv)
    model = build_model(args)
    return model, torch.optim.AdamW(parameter_groups(model), lr=args.learning_rate)


def assert_every_checkpoint_loads(output_dir: Path, argv: list[str]) -> list[int]:
    """Each `checkpoint-*` on disk restores a fresh model and optimizer of the run `argv` and holds the state of its
    own step; the latest one is the newest of them, never a temporary folder. Returns the steps found."""
    steps = []
    for folder in checkpoint_folders(output_dir):
        model, optimizer = fresh_model_and_optimizer(argv)
        state = load_checkpoint(folder, model, optimizer)
        assert state["global_step"] == step_of(folder), folder
        assert optimizer.state_dict()["state"], f"{folder}: no optimizer state restored"
        assert all(torch.isfinite(value).all() for value in model.state_dict().values()), folder
        steps.append(step_of(folder))
    latest = latest_checkpoint(output_dir)
    assert step_of(latest) == (max(steps) if steps else 0)
    assert latest is None or latest.name.startswith("checkpoint-")
    return steps


def kill_plan(seed: int, kinds=KILL_KINDS) -> list[dict]:
    """Reproducible kill points: each fires `offset` steps after the checkpoint the attempt resumes from (kind
    `export`: after the last step); `delay` (kind `random` only) is how long after that checkpoint appears the
    process is killed."""
    rng = random.Random(seed)
    return [{"kind": kind, "offset": rng.randint(1, 2), "delay": round(rng.uniform(0.0, 0.3), 3)} for kind in kinds]


def kill_resume_argv(run_argv: list[str], output_dir: Path, total_steps: int, keep: int) -> list[str]:
    """The run `run_argv` in `output_dir`, checkpointing every step, resuming from the latest checkpoint."""
    return [*run_argv, "--output_dir", str(output_dir), "--max_train_steps", str(total_steps),
            "--checkpointing_steps", "1", "--checkpoints_total_limit", str(keep), "--resume_from_checkpoint", "latest"]


def start(arguments: list[str], log_path: Path) -> subprocess.Popen:
    """`python -m benchmarks.held_checkpoint ARGUMENTS`, from the repository root (where `-m` finds `benchmarks`)."""
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "benchmarks.held_checkpoint", *arguments], cwd=REPO_ROOT,
                                env=os.environ | RUN_ENV, stdout=log, stderr=subprocess.STDOUT)


def tail(log_path: Path, size: int = 4000) -> str:
    return log_path.read_text(errors="replace")[-size:]


def wait_until(condition, process: subprocess.Popen, log_path: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"exited ({process.returncode}) before the kill point:\n{tail(log_path)}"
        assert time.monotonic() < deadline, f"kill point not reached in {timeout}s:\n{tail(log_path)}"
        time.sleep(0.005)


class Attempt:
    """One training attempt, `held_checkpoint KIND wait:GO_FILE ...`: started early so that its imports overlap the
    previous attempt, told its trigger step (and so released) when its turn comes."""

    def __init__(self, work_dir: Path, number: int, kind: str, argv: list[str]):
        self.kind, self.number = kind, number
        self.go_file, self.signal_file = work_dir / f"go-{number}", work_dir / f"signal-{number}.json"
        self.log_path = work_dir / f"attempt-{number}.log"
        phase = "none" if kind in ("random", "finish") else kind
        self.process = start([phase, f"wait:{self.go_file}", str(self.signal_file), *argv], self.log_path)

    def release(self, trigger: int) -> None:
        partial = self.go_file.with_suffix(".partial")
        partial.write_text(str(trigger))
        os.replace(partial, self.go_file)  # the attempt never reads a half-written step


def kill_at(attempt: Attempt, output_dir: Path, point: dict, total_steps: int) -> dict:
    """Release `attempt` (it resumes from the latest checkpoint), SIGKILL it at `point`, return what was hit."""
    resumed_from = step_of(latest_checkpoint(output_dir))
    trigger = total_steps if point["kind"] == "export" else min(resumed_from + point["offset"], total_steps)
    attempt.release(trigger)
    if point["kind"] == "random":
        wait_until(lambda: (output_dir / f"checkpoint-{trigger}").is_dir(), attempt.process, attempt.log_path)
        time.sleep(point["delay"])
    else:
        wait_until(attempt.signal_file.is_file, attempt.process, attempt.log_path)
    on_disk = sorted(path.name for path in output_dir.iterdir())
    attempt.process.kill()
    attempt.process.wait()
    hit = {"attempt": attempt.number, "kind": point["kind"], "resumed_from": resumed_from, "trigger_step": trigger,
           "on_disk_at_kill": on_disk, "returncode": attempt.process.returncode,
           "released_at": attempt.go_file.stat().st_mtime}
    if attempt.signal_file.is_file():
        hit["window"] = json.loads(attempt.signal_file.read_text())
    return hit


def kill_every_point(work_dir: Path, plan: list[dict], argv: list[str], total_steps: int, on_kill,
                     processes: list[subprocess.Popen]) -> list[dict]:
    """The chain of attempts in `work_dir/interrupted`, each killed at its point of `plan`, then the last one
    finished; every process started is appended to `processes`. Returns the points hit."""
    interrupted = work_dir / "interrupted"
    kinds = [point["kind"] for point in plan] + ["finish"]
    attempts = [Attempt(work_dir, 0, kinds[0], argv)]
    processes.append(attempts[0].process)
    hits = []
    for number, point in enumerate(plan):
        attempts.append(Attempt(work_dir, number + 1, kinds[number + 1], argv))
        processes.append(attempts[-1].process)
        hit = kill_at(attempts[number], interrupted, point, total_steps)
        assert hit["returncode"] == -9, hit
        if on_kill is not None:
            on_kill(hit, interrupted, argv)
        hits.append(hit)
    final = attempts[-1]
    final.release(total_steps)
    assert final.process.wait(timeout=RUN_TIMEOUT) == 0, tail(final.log_path)
    return hits


def run_with_kills(work_dir: Path, plan: list[dict], run_argv: list[str], total_steps: int, keep: int,
                   on_kill=None) -> tuple[list[dict], dict]:
    """The pretraining run `run_argv` (arguments without output folder, step count or checkpointing) uninterrupted
    (in parallel), and the same run killed at every point of `plan`, each attempt resuming from the latest
    checkpoint, then finished. `on_kill(hit, output_dir, argv)` runs after every kill. Returns the points hit and
    the two output folders, `{"uninterrupted": ..., "interrupted": ...}`."""
    work_dir.mkdir(parents=True, exist_ok=True)
    outputs = {"uninterrupted": work_dir / "uninterrupted", "interrupted": work_dir / "interrupted"}
    outputs["interrupted"].mkdir()
    baseline_log = work_dir / "uninterrupted.log"
    baseline_argv = kill_resume_argv(run_argv, outputs["uninterrupted"], total_steps, keep)
    processes = [start(["none", "0", str(work_dir / "signal-uninterrupted.json"), *baseline_argv], baseline_log)]
    try:
        argv = kill_resume_argv(run_argv, outputs["interrupted"], total_steps, keep)
        hits = kill_every_point(work_dir, plan, argv, total_steps, on_kill, processes)
        assert processes[0].wait(timeout=RUN_TIMEOUT) == 0, tail(baseline_log)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return hits, outputs
