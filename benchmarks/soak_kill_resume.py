# SPDX-License-Identifier: Apache-2.0
"""Soak test of crash safety: SIGKILL a pretraining run many times, resume it each time, compare the end.

    python -m benchmarks.soak_kill_resume --kills 12 --total_steps 40 --seed 0

A longer version of the kill test of `tests/test_reliability.py`, on the machinery of `benchmarks.kill_resume`: a
tiny I-JEPA on 64 CIFAR-10 photos, `--checkpointing_steps 1`, run once without interruption and once killed at
`--kills` points drawn from a seeded RNG (inside a checkpoint write, between flush and rename, while an old
checkpoint is being deleted, at a random moment after a checkpoint, and finally during the export), each attempt
resuming with `--resume_from_checkpoint latest`. After every kill, every `checkpoint-*` left on disk must load into
a fresh model and optimizer, and the latest must be the newest complete one. Prints one row per kill point and
whether the final weights are bitwise those of the uninterrupted run. Needs ../shared/data/cifar10; CPU only (one
thread per process, for bitwise equality).
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from benchmarks.kill_resume import (
    REPO_ROOT,
    assert_every_checkpoint_loads,
    checkpoint_folders,
    kill_plan,
    pretraining_weights,
    run_with_kills,
    temporary_folders,
)

MID_RUN_KINDS = ("write", "rename", "prune", "random")
# A tiny I-JEPA: an attempt trains for seconds, so that the kills, not the training, take the time.
TINY_RUN = {
    "max_train_samples": 64, "per_device_train_batch_size": 16, "image_size": 32, "patch_size": 8, "hidden_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 2, "predictor_hidden_size": 16, "predictor_num_hidden_layers": 1,
    "min_context_patches": 2, "logging_steps": 1, "monitor_steps": 2, "warmup_steps": 1, "learning_rate": 1e-3,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=12, help="Kill points, the last one during the export.")
    parser.add_argument("--total_steps", type=int, default=40, help="Optimizer steps of the run (at least 3 per kill).")
    parser.add_argument("--keep", type=int, default=2, help="--checkpoints_total_limit of the runs.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the kill plan.")
    parser.add_argument("--dataset_name", default=str(REPO_ROOT.parent / "shared" / "data" / "cifar10"),
                        help="The image data set the run trains on (its first 64 images).")
    parser.add_argument("--work_dir", type=str, default=None, help="Where the runs go (default: a temporary folder).")
    parser.add_argument("--report", type=str, default=None, help="Also write the kill points and the verdict as JSON.")
    args = parser.parse_args(argv)
    if args.kills < 1 or args.total_steps < 3 * args.kills:
        parser.error("need --kills >= 1 and --total_steps >= 3 * --kills (each kill may use up to 3 steps)")
    return args


def run_argv(dataset_name: str) -> list[str]:
    """The pretraining arguments of the soaked run, without output folder, step count and checkpointing."""
    argv = ["--dataset_name", dataset_name, "--no-probe_after_training"]
    return argv + [item for name, value in TINY_RUN.items() for item in (f"--{name}", str(value))]


def soak_plan(seed: int, kills: int) -> list[dict]:
    """`kills - 1` kill points of random kinds, then one during the export."""
    rng = random.Random(seed)
    kinds = [rng.choice(MID_RUN_KINDS) for _ in range(kills - 1)] + ["export"]
    return kill_plan(rng.randrange(2**32), kinds)


def check_after_kill(hit: dict, output_dir: Path, argv: list[str]) -> None:
    """Record in `hit` whether every checkpoint left on disk loads; a failure is reported, and the soak goes on."""
    try:
        hit["checkpoints_after_kill"] = assert_every_checkpoint_loads(output_dir, argv)
        hit["check"] = "ok"
    except (AssertionError, OSError, ValueError, RuntimeError) as error:
        hit["checkpoints_after_kill"] = [folder.name for folder in checkpoint_folders(output_dir)]
        hit["check"] = f"FAILED: {type(error).__name__}: {error}"
    hit["temporary_after_kill"] = temporary_folders(output_dir)


def print_kill_points(hits: list[dict], plan: list[dict]) -> None:
    header = (f"{'#':>3}  {'kind':<7} {'resumed':>7} {'trigger':>7}  {'moment':<26} {'on disk at kill':<60} "
              f"{'ckpts after':<12} check")
    print(header)
    print("-" * len(header))
    for hit in hits:
        if hit["kind"] == "random":
            moment = f"{plan[hit['attempt']]['delay']}s after checkpoint-{hit['trigger_step']}"
        else:
            moment = f"{hit['kind']} window of step {hit['window']['step']}"
        shown = ("checkpoint-", ".tmp-", "pretraining")
        on_disk = " ".join(name for name in hit["on_disk_at_kill"] if name.startswith(shown))
        steps = ",".join(str(step) for step in hit["checkpoints_after_kill"])
        print(f"{hit['attempt']:>3}  {hit['kind']:<7} {hit['resumed_from']:>7} {hit['trigger_step']:>7}  "
              f"{moment:<26} {on_disk:<60} {steps:<12} {hit['check']}")


def verdict(hits: list[dict], outputs: dict, args) -> dict:
    """What the soak found: the final weights and logs of both runs alike, every checkpoint loaded after every kill,
    and the newest `--keep` checkpoints kept."""
    expected = pretraining_weights(outputs["uninterrupted"] / "pretraining")
    resumed = pretraining_weights(outputs["interrupted"] / "pretraining")
    different = sorted(name for name, value in expected.items()
                       if name not in resumed or not torch.equal(resumed[name], value))
    logs = [(folder / "training_log.jsonl").read_text() for folder in outputs.values()]
    kept_steps = range(args.total_steps - args.keep + 1, args.total_steps + 1)
    return {
        "weights_match": not different and expected.keys() == resumed.keys(), "different_weights": different,
        "logs_match": logs[0] == logs[1], "all_checkpoints_loaded": all(hit["check"] == "ok" for hit in hits),
        "kept": [folder.name for folder in checkpoint_folders(outputs["interrupted"])],
        "expected_kept": [f"checkpoint-{step}" for step in kept_steps],
        "seed": args.seed, "total_steps": args.total_steps,
    }


def yes_no(value: bool) -> str:
    return "yes" if value else "NO"


def main(argv=None) -> int:
    args = parse_args(argv)
    transformers.utils.logging.disable_progress_bar()
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="soak-kill-resume-"))
    plan = soak_plan(args.seed, args.kills)
    started = time.perf_counter()
    hits, outputs = run_with_kills(work_dir, plan, run_argv(args.dataset_name), args.total_steps, args.keep,
                                   on_kill=check_after_kill)
    found = verdict(hits, outputs, args)
    print_kill_points(hits, plan)
    print(f"\n{len(hits)} kills over {args.total_steps} steps in {time.perf_counter() - started:.0f} s "
          f"(seed {args.seed}); runs and logs in {work_dir}.")
    print(f"every checkpoint left after every kill loaded: {yes_no(found['all_checkpoints_loaded'])}")
    different = ", ".join(found["different_weights"][:5])
    print(f"final weights bitwise equal to the uninterrupted run: {yes_no(found['weights_match'])} {different}")
    print(f"training logs identical: {yes_no(found['logs_match'])}")
    print(f"checkpoints kept: {found['kept']} (expected {found['expected_kept']})")
    if args.report:
        Path(args.report).write_text(json.dumps({"verdict": found, "kill_points": hits}, indent=2))
    passed = found["weights_match"] and found["all_checkpoints_loaded"] and found["logs_match"]
    return 0 if passed and found["kept"] == found["expected_kept"] else 1


if __name__ == "__main__":
    sys.exit(main())
