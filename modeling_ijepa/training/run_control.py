# SPDX-License-Identifier: Apache-2.0
"""Control of a training run's processes: one run per output folder, and a clean stop when the cluster preempts it.

- `OutputDirLock`: an exclusive lock on `--output_dir`, so that a second run (or a requeued copy of a run whose
  old process still lives) is refused instead of interleaving its checkpoints with the first. It is an `flock` on
  a file in the folder: the operating system releases it when the process ends, however it ends, so a crash or a
  `kill -9` never leaves a stale lock. Only the main process takes it.
- `PreemptionHandler`: SIGTERM and SIGUSR1 (what SLURM sends before it stops a job, e.g. `--signal=USR1@120`) no
  longer kill the process; they set a flag that the training loop reads once per optimizer step. Every process
  then finishes the step, they write a checkpoint together, and the script exits with `PREEMPTION_EXIT_CODE`, on
  which a job script can requeue the run with `--resume_from_checkpoint latest`.
"""

import fcntl
import logging
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# EX_TEMPFAIL of sysexits.h, "a temporary failure; the user is invited to retry": the run is checkpointed and can
# be resumed. Unlike 143 (128 + SIGTERM), it cannot be mistaken for a process that a signal killed mid-step.
PREEMPTION_EXIT_CODE = 75


class OutputDirInUseError(RuntimeError):
    """Another process holds the lock on the output folder."""


class OutputDirLock:
    """An exclusive, non-blocking lock on `output_dir` (which must exist), held until `release`, or until this object
    is garbage-collected or the process ends.

    The lock file records the holder's process id for the error message, and is removed on release. Removing it
    could let two processes lock two different files under the same name (one still holding the old, unlinked
    file), so `acquire` checks that the file it locked is still the one in the folder and tries again if not."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_FILE
        self.file = None

    def acquire(self) -> "OutputDirLock":
        while True:
            file = open(self.path, "a+")
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.seek(0)
                holder = file.read().strip() or "unknown"
                file.close()
                raise OutputDirInUseError(
                    f"--output_dir {self.path.parent} is in use by another run (process {holder}, which holds "
                    f"{self.path}). Wait for it to end, stop it, or choose another --output_dir."
                ) from None
            try:
                same_file = os.path.samestat(os.fstat(file.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            file.close()  # the holder released and removed it between our open and our lock
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self.file = file
        return self

    def release(self) -> None:
        if self.file is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked, so nobody takes the lock on a file being removed
        self.file.close()
        self.file = None

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


class Preempted(SystemExit):
    """Raised once the checkpoint of a preempted run is written; uncaught, it exits with `PREEMPTION_EXIT_CODE`."""

    def __init__(self, signal_name: str, checkpoint: Path | None):
        super().__init__(PREEMPTION_EXIT_CODE)
        self.signal_name = signal_name
        self.checkpoint = checkpoint


class PreemptionHandler:
    """Turns SIGTERM and SIGUSR1 into a request to stop after the current optimizer step.

    `install()` replaces the signals' handlers (call it on every process), `restore()` puts the previous ones back;
    as a context manager it does both. `should_stop()` is what the loop calls after every optimizer step; once it
    has returned True, `stopped` is True on every process (a signal seen only after the last step leaves it False:
    that run finishes normally). It must return the same answer on every
    process, or some would wait forever for the others in the next collective, and a signal may reach only some
    of them (a launcher forwards it to its own workers, a user signals one process). So with several processes
    it is a collective: a max all-reduce of one integer, on a CPU tensor through a gloo process group (the
    default group under gloo, a gloo group made for it under NCCL). That costs a few tens of microseconds of
    host-to-host communication per step and never waits for the accelerator: no device value is read back.
    """

    def __init__(self, signals=PREEMPTION_SIGNALS):
        self.signals = tuple(signals)
        self.received: str | None = None
        self.stopped = False
        self._previous: dict[int, object] = {}
        self._distributed = False
        self._group = None

    def install(self) -> "PreemptionHandler":
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # A collective: every process creates the group, in the same order.
            self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
            self._distributed = True
        return self

    def __enter__(self) -> "PreemptionHandler":
        return self.install()

    def __exit__(self, *exc_info) -> None:
        self.restore()

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        # Only set a flag: a signal handler runs between two bytecodes of whatever the process was doing.
        self.received = signal.Signals(signum).name

    def should_stop(self) -> bool:
        """Whether any process has received a preemption signal (a collective with several processes). Once it
        returns True, `stopped` is True on every process; `received` names the signal."""
        if self._distributed:
            flag = torch.tensor([int(self.received is not None)], dtype=torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
            if flag.item() and self.received is None:
                self.received = "a signal to another process"
            self.stopped = bool(flag.item())
        else:
            self.stopped = self.received is not None
        return self.stopped
