#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""Soak test of crash safety: SIGKILL a pretraining run many times, resume it each time, compare the end.

    python benchmarks/soak_kill_resume.py --kills 12 --total_steps 40 --seed 0

A longer version of `tests/test_reliability.py::test_kill_at_random_points_then_resume_ends_bitwise_equal_to_an_uninterrupted_run`
(same machinery, imported from there): a tiny I-JEPA on 64 CIFAR-10 photos, `--checkpointing_steps 1`, run once
without interruption and once killed at `--kills` points drawn from a seeded RNG (inside a checkpoint write,
between flush and rename, while an old checkpoint is being deleted, at a random moment after a checkpoint, and
finally during the export), each attempt resuming with `--resume_from_checkpoint latest`. After every kill,
every `checkpoint-*` left on disk must load into a fresh model and optimizer, and the latest must be the newest
complete one. Prints one row per kill point and whether the final weights are bitwise those of the
uninterrupted run. Needs ../shared/data/cifar10; CPU only (one thread per process, for bitwise equality).
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch
import transformers

from tests.test_reliability import (
    assert_every_checkpoint_loads,
    checkpoint_folders,
    kill_plan,
    pretraining_weights,
    run_with_kills,
    temporary_folders,
)

MID_RUN_KINDS = ("write", "rename", "prune", "random")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=12, help="Kill points, the last one during the export.")
    parser.add_argument("--total_steps", type=int, default=40, help="Optimizer steps of the run (at least 3 per kill).")
    parser.add_argument("--keep", type=int, default=2, help="--checkpoints_total_limit of the runs.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the kill plan.")
    parser.add_argument("--work_dir", type=str, default=None, help="Where the runs go (a temporary folder if not given).")
    parser.add_argument("--report", type=str, default=None, help="Also write the kill points and the verdict as JSON.")
    args = parser.parse_args(argv)
    if args.kills < 1 or args.total_steps < 3 * args.kills:
        parser.error("need --kills >= 1 and --total_steps >= 3 * --kills (each kill may use up to 3 steps)")
    return args


def soak_plan(seed: int, kills: int) -> list[dict]:
    """`kills - 1` kill points of random kinds, then one during the export."""
    rng = random.Random(seed)
    kinds = [rng.choice(MID_RUN_KINDS) for _ in range(kills - 1)] + ["export"]
    return kill_plan(rng.randrange(2**32), kinds)


def main(argv=None) -> int:
    args = parse_args(argv)
    transformers.utils.logging.disable_progress_bar()
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="soak-kill-resume-"))
    plan = soak_plan(args.seed, args.kills)

    def check(hit, output_dir, run_argv):
        try:
            hit["checkpoints_after_kill"] = assert_every_checkpoint_loads(output_dir, run_argv)
            hit["check"] = "ok"
        except (AssertionError, OSError, ValueError, RuntimeError) as error:  # report it, carry on
            hit["checkpoints_after_kill"] = [folder.name for folder in checkpoint_folders(output_dir)]
            hit["check"] = f"FAILED: {type(error).__name__}: {error}"
        hit["temporary_after_kill"] = temporary_folders(output_dir)

    started = time.perf_counter()
    hits, outputs = run_with_kills(work_dir, plan, args.total_steps, args.keep, on_kill=check)
    expected = pretraining_weights(outputs["uninterrupted"] / "pretraining")
    resumed = pretraining_weights(outputs["interrupted"] / "pretraining")
    different = sorted(name for name, value in expected.items() if name not in resumed or not torch.equal(resumed[name], value))
    logs = [(folder / "training_log.jsonl").read_text() for folder in outputs.values()]
    kept = [folder.name for folder in checkpoint_folders(outputs["interrupted"])]
    wanted = [f"checkpoint-{step}" for step in range(args.total_steps - args.keep + 1, args.total_steps + 1)]

    header = (f"{'#':>3}  {'kind':<7} {'resumed':>7} {'trigger':>7}  {'moment':<26} {'on disk at kill':<60} "
              f"{'ckpts after':<12} check")
    print(header)
    print("-" * len(header))
    for hit in hits:
        if hit["kind"] == "random":
            moment = f"{plan[hit['attempt']]['delay']}s after checkpoint-{hit['trigger_step']}"
        else:
            moment = f"{hit['kind']} window of step {hit['window']['step']}"
        on_disk = " ".join(name for name in hit["on_disk_at_kill"] if name.startswith(("checkpoint-", ".tmp-", "pretraining")))
        steps = ",".join(str(step) for step in hit["checkpoints_after_kill"])
        print(f"{hit['attempt']:>3}  {hit['kind']:<7} {hit['resumed_from']:>7} {hit['trigger_step']:>7}  "
              f"{moment:<26} {on_disk:<60} {steps:<12} {hit['check']}")
    all_loaded = all(hit["check"] == "ok" for hit in hits)
    matched = not different and expected.keys() == resumed.keys()
    print(f"\n{len(hits)} kills over {args.total_steps} steps in {time.perf_counter() - started:.0f} s (seed {args.seed}); "
          f"runs and logs in {work_dir}.")
    print(f"every checkpoint left after every kill loaded: {'yes' if all_loaded else 'NO'}")
    print(f"final weights bitwise equal to the uninterrupted run: {'yes' if matched else 'NO: ' + ', '.join(different[:5])}")
    print(f"training logs identical: {'yes' if logs[0] == logs[1] else 'NO'}")
    print(f"checkpoints kept: {kept} (expected {wanted})")
    if args.report:
        verdict = {"weights_match": matched, "logs_match": logs[0] == logs[1], "all_checkpoints_loaded": all_loaded,
                   "kept": kept, "seed": args.seed, "total_steps": args.total_steps}
        Path(args.report).write_text(json.dumps({"verdict": verdict, "kill_points": hits}, indent=2))
    return 0 if matched and all_loaded and logs[0] == logs[1] and kept == wanted else 1


if __name__ == "__main__":
    sys.exit(main())
