# SPDX-License-Identifier: Apache-2.0
"""Streamed pretraining images (`--streaming`): a Hub id or a local folder of parquet or webdataset shards, read with
`datasets.load_dataset(..., streaming=True)`, split across processes with `datasets.distributed.split_dataset_by_node`,
shuffled through a buffer, and resumed exactly where a checkpoint stopped, without reading the stream from its start.

The data flows through three objects:

- `StreamingExamples`: one process's endless stream of undecoded images, data epoch after data epoch. It fills a
  buffer with `buffer_size` rows, yields them in a random order drawn from `(seed, epoch, window)`, then fills it
  again. Its `state_dict()` is the datasets stream's own `state_dict()` at the start of the current buffer window
  plus how many of the window's rows were yielded: small, and JSON-serialisable.
- `StreamedImages`: decodes and transforms one streamed image, seeded by `(seed, epoch, position in this process's
  stream)`, with the same transform and the same handling of unreadable images as the map-style path.
- `StreamingDataLoader`: per-device batches, masks through `GlobalBatchMaskCollate`, and the state of the last
  batch the loop received (not of the batches DataLoader workers prefetched).

`StreamingTrainingData` gathers them for the training loop, as `pipeline.TrainingData` does for map-style data.

Why not `datasets.IterableDataset.shuffle(buffer_size=...)`: the state_dict of a datasets stream leaves out the
content of its shuffle buffer (its documentation says so); a resumed stream refills the buffer with new rows and
draws another order. A window of this buffer is re-read from its saved start on resume (at most `buffer_size`
undecoded rows) and permuted with the same seed, so a resumed run sees exactly the batches of an uninterrupted one.

Why the stream is read in the main process, and DataLoader workers only decode: workers that each read a part of
the stream would make the order of the batches depend on the number of workers, and their states would have to be
collected from the worker processes. Here the batch sampler reads the stream and sends the undecoded images to the
workers, so the batches (pixels and masks) are the same for any number of workers. A thread reads the next window
while the current one is consumed (`read_ahead`): each process holds up to three windows of undecoded images.
"""

import collections
import copy
import itertools
import threading
from dataclasses import dataclass
from pathlib import Path
from queue import Full, Queue

import numpy as np
import torch
from accelerate.utils import gather_object, send_to_device
from datasets import Dataset, Image, load_dataset
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, default_collate

from modeling_ijepa.data.examples import GlobalBatchMaskCollate, example_seed
from modeling_ijepa.data.images import DecodeAndTransform, SkipUnreadable, find_image_column, pretraining_transform

# The last entry of the window-order seed, so that a window's order and the example seeds `example_seed(seed,
# epoch, position)` come from unrelated streams.
WINDOW_ORDER_STREAM = 1

STATE_KEYS = ("epoch", "window", "offset", "upstream", "buffer_size")


def window_order(seed: int, epoch: int, window: int, size: int) -> np.ndarray:
    """The order, a permutation of `range(size)`, in which window `window` of data epoch `epoch` yields its rows."""
    return np.random.default_rng([seed, epoch, window, WINDOW_ORDER_STREAM]).permutation(size)


def epoch_start(epoch: int, buffer_size: int) -> dict:
    """The state of a stream at the start of data epoch `epoch` (`upstream` None: the datasets stream's start)."""
    return {"epoch": epoch, "window": 0, "offset": 0, "upstream": None, "buffer_size": buffer_size}


def read_ahead(items, depth: int = 1):
    """Iterate over the iterator `items` in a background thread, at most `depth` items ahead of the caller, and re-raise
    its errors in the caller. The stream's reads (downloads, parquet decompression, which release the GIL) then overlap
    the training step instead of stalling it once per window. Closing this generator stops and joins the thread."""
    queue = Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                queue.put(entry, timeout=0.1)
                return True
            except Full:  # the caller is busy, or gone: look at `stop` again
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as error:  # noqa: BLE001 (the caller raises it)
            put((False, error))
        finally:
            items.close()

    thread = threading.Thread(target=produce, name="stream-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            is_item, value = queue.get()
            if is_item:
                yield value
            elif value is None:
                return
            else:
                raise value
    finally:
        stop.set()
        thread.join()


class StreamingExamples:
    """One process's stream of undecoded images: an endless iterator of `(epoch, position, cell)`, where `cell` is a
    datasets image cell (`{"bytes", "path"}`) and `position` its index in this process's data epoch `epoch`.

    Each data epoch reads this process's share of the dataset once (`datasets.IterableDataset.set_epoch(epoch)`, which
    also lets datasets reorder the shards), `buffer_size` rows at a time; each such window yields its rows in the order
    `window_order(seed, epoch, window)`. The next data epoch starts when the share is exhausted, on each process on
    its own, so processes with shares of different sizes never wait for each other. A window of `buffer_size` rows is
    a full shuffle of consecutive rows, not the rolling buffer of `datasets`: rows of two windows never mix, so shards
    should not be sorted (by class, say); `write_parquet_shards` shuffles the rows it writes.

    `state_dict()` describes the stream after the last item yielded; `load_state_dict()` makes the next iteration
    start right after it. One iterator at a time: a new one stops the previous one.
    """

    def __init__(self, dataset, image_column: str, seed: int, buffer_size: int, num_shards: int | None = None,
                 num_examples: int | None = None):
        if buffer_size < 1:
            raise ValueError(f"The shuffle buffer must hold at least one example: --shuffle_buffer_size {buffer_size}.")
        self.dataset = dataset
        self.image_column = image_column
        self.seed = seed
        self.buffer_size = buffer_size
        self.num_shards = num_shards
        self.num_examples = num_examples  # of the whole split, when the dataset's metadata says it; else None
        self._start = self._state = epoch_start(0, buffer_size)
        self._reader = None

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the beginning of data epoch `epoch` (dropping a loaded state)."""
        self._start = self._state = epoch_start(epoch, self.buffer_size)

    def state_dict(self) -> dict:
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict) -> None:
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"Not a stream state: it lacks {missing} (it has {sorted(state)}).")
        if state["buffer_size"] != self.buffer_size:
            raise ValueError(
                f"The stream was saved with --shuffle_buffer_size {state['buffer_size']}; resume it with the same "
                f"size (this run has {self.buffer_size}), or the order of its examples changes."
            )
        self._start = self._state = copy.deepcopy(state)

    def _windows(self, epoch: int, window: int, upstream: dict | None):
        """`(window, upstream state at its start, cells)` for each window of data epoch `epoch`, from `window`, whose
        first row is where the datasets stream's state `upstream` stopped."""
        self.dataset.set_epoch(epoch)
        # None also clears a state loaded to resume an earlier epoch.
        self.dataset.load_state_dict(upstream)
        rows = iter(self.dataset)
        while cells := [row[self.image_column] for row in itertools.islice(rows, self.buffer_size)]:
            yield window, upstream, cells
            # Nothing was read since the window's last row: this is the state at the next window's start.
            upstream = self.dataset.state_dict()
            window += 1

    def _all_windows(self, start: dict):
        """`(epoch, window, upstream state at its start, cells)` for each window from the state `start` on, forever."""
        epoch, first_window, upstream = start["epoch"], start["window"], start["upstream"]
        while True:
            num_rows = 0
            for window, window_start, cells in self._windows(epoch, first_window, upstream):
                num_rows += len(cells)
                yield epoch, window, window_start, cells
            if num_rows == 0:
                raise ValueError(f"Data epoch {epoch} of this process's share of the stream has no examples: the "
                                 "dataset is empty, or has fewer shards or examples than there are processes.")
            epoch, first_window, upstream = epoch + 1, 0, None

    def close(self) -> None:
        """Stop the read-ahead thread of the current iterator, if any."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __iter__(self):
        # One iterator at a time: the previous one's thread must stop reading the datasets stream first.
        self.close()
        self._reader = read_ahead(self._all_windows(self._start))
        offset = self._start["offset"]
        for epoch, window, window_start, cells in self._reader:
            order = window_order(self.seed, epoch, window, len(cells))
            for index in range(offset, len(cells)):
                self._state = {"epoch": epoch, "window": window, "offset": index + 1, "upstream": window_start,
                               "buffer_size": self.buffer_size}
                yield epoch, window * self.buffer_size + index, cells[order[index]]
            offset = 0


class StreamedImages(torch.utils.data.Dataset):
    """Map-style dataset whose keys are `StreamingExamples` items `(epoch, position, cell)`: decodes and transforms the
    image `cell` into `{"pixel_values": [3, H, W]}` (`None` for an unreadable image, which `SkipUnreadable` drops and
    counts), with torch's RNG seeded by `example_seed(seed, epoch, position)`.

    This is `SeededExamples`' rule (the seed formula and the forked CPU generator), with the epoch taken from the key:
    batches run ahead into the next data epoch, so an epoch set in shared memory would be wrong for some keys."""

    def __init__(self, transform, seed: int):
        self.decode = DecodeAndTransform("image", transform)
        self.seed = seed

    def __getitem__(self, key: tuple[int, int, dict]) -> dict:
        epoch, position, cell = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(example_seed(self.seed, epoch, position))
            return {"pixel_values": self.decode({"image": [cell]})["pixel_values"][0]}


class StreamingDataLoader:
    """The batches of one process in `--streaming` mode: an endless iterator of per-device batches
    `{"pixel_values": [B, 3, H, W], "context_indices": [B, Kc], "target_indices": [B, M, Kt], "num_skipped": int}`.

    Built by `build_streaming_training_data`. It is not given to `accelerator.prepare`: the stream is already split
    across processes and Accelerate would shard it again; `device` is where batches are sent instead. Iterating it
    again continues after the last batch received. `state_dict()` (JSON-serialisable) is the state after the last
    batch the caller received; `load_state_dict()` resumes there.

    Masks: global batch `k` (counted from the start of the run, across data epochs, which processes pass at different
    times) gets the masks the collator draws from `(seed, 0, k)`, identical on every process.
    """

    def __init__(self, examples: StreamingExamples, images: StreamedImages, collate, batch_size: int,
                 num_workers: int = 0, device=None):
        self.examples = examples
        self.images = images
        self.collate = collate
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self.num_batches = 0
        self._received = examples.state_dict()

    def state_dict(self) -> dict:
        return {"batches": self.num_batches, "stream": copy.deepcopy(self._received)}

    def load_state_dict(self, state: dict) -> None:
        self.examples.load_state_dict(state["stream"])
        self.num_batches = int(state["batches"])
        self._received = self.examples.state_dict()

    def _item_batches(self, states: collections.deque):
        """The batch sampler: lists of `batch_size` stream items; the stream's state after each goes into `states`."""
        items = iter(self.examples)
        while True:
            batch = list(itertools.islice(items, self.batch_size))
            states.append(self.examples.state_dict())
            yield batch

    def __iter__(self):
        # No thread may run while DataLoader forks its workers; the stream's thread starts after, with the sampler.
        self.examples.close()
        # The sampler reads ahead of the batches received (DataLoader prefetches): restart from the last received one.
        self.examples.load_state_dict(self._received)
        if hasattr(self.collate, "set_epoch"):  # a mask collator
            self.collate.set_epoch(0, start_batch=self.num_batches)
        states = collections.deque()
        loader = DataLoader(self.images, batch_sampler=self._item_batches(states), collate_fn=self.collate,
                            num_workers=self.num_workers)
        try:
            for batch in loader:
                self._received = states.popleft()  # DataLoader yields batches in the sampler's order
                self.num_batches += 1
                yield batch if self.device is None else send_to_device(batch, self.device)
        finally:
            self.examples.close()


def load_streaming_images(
    dataset_name_or_folder: str,
    split: str = "train",
    image_column: str | None = None,
    seed: int = 0,
    buffer_size: int = 1000,
    rank: int = 0,
    world_size: int = 1,
    config_name: str | None = None,
    cache_dir: str | None = None,
) -> StreamingExamples:
    """Process `rank`'s (of `world_size`) `StreamingExamples` of split `split` of a Hub id or a local folder (parquet or
    webdataset shards in Hub layout, or an image folder), read with `load_dataset(..., streaming=True)`.

    `split_dataset_by_node` gives each process whole shards when their number is a multiple of `world_size`, else one
    example in `world_size` (every process then reads every shard). Raises `ValueError` naming the problem for a
    missing local folder, a missing split or no image column."""
    path = Path(dataset_name_or_folder).expanduser()
    looks_local = dataset_name_or_folder.startswith((".", "/", "~")) or path.exists()
    if looks_local and not path.is_dir():
        raise ValueError(f"--streaming: {dataset_name_or_folder} is not a local folder (and it is not a Hub id).")
    splits = load_dataset(str(path) if looks_local else dataset_name_or_folder, config_name, streaming=True,
                          cache_dir=cache_dir)
    if split not in splits:
        raise ValueError(f"No split `{split}` in the streamed dataset; it has {list(splits)}. Use --train_split.")
    dataset = splits[split]
    if dataset.features is None:
        raise ValueError(f"The streamed dataset {dataset_name_or_folder} does not declare its columns and their types, "
                         "so its image column cannot be found: stream parquet or webdataset shards.")
    column = find_image_column(dataset, image_column)
    num_shards = dataset.num_shards
    dataset = dataset.select_columns([column]).cast_column(column, Image(decode=False))
    if world_size > 1:
        dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
    info = dataset.info.splits.get(split) if dataset.info.splits else None
    num_examples = info.num_examples if info is not None and info.num_examples else None
    return StreamingExamples(dataset, column, seed, buffer_size, num_shards=num_shards, num_examples=num_examples)


# Where a checkpoint's trainer state keeps every process's stream state (`StreamingTrainingData.save_state`).
STREAM_STATE_KEY = "data_stream"


@dataclass
class StreamingTrainingData:
    """`pipeline.TrainingData` for `--streaming`: the same fields and `epoch_batches`, and the stream's position in the
    checkpoints (`save_state`, `load_state`).

    The loop runs the whole run as one loop epoch of `batches_per_epoch = max_train_steps * gradient_accumulation_steps`
    batches: a stream has no length, and its own data epochs (passes over each process's share) end on each process at
    another batch. They are counted in the stream's state. `dataloader` is not prepared by Accelerate (it is split
    across processes already, and sends its batches to the device itself).
    """

    examples: StreamingExamples
    collate: object
    dataloader: StreamingDataLoader
    description: str
    grid: dict[str, int]
    batches_per_epoch: int
    process_index: int = 0
    num_processes: int = 1

    @property
    def num_examples(self) -> int | None:
        """The size of the streamed split when its metadata gives it (the model card's count), else None."""
        return self.examples.num_examples

    def epoch_batches(self, accelerator, epoch: int, skip: int = 0):
        """The batches after the `skip` ones this (only) loop epoch has seen: the stream continues from its state."""
        if epoch != 0 or skip != self.dataloader.num_batches:
            raise RuntimeError(
                f"The stream is at batch {self.dataloader.num_batches} of loop epoch 0, not at batch {skip} of loop "
                f"epoch {epoch}: a resumed --streaming run must call `load_state` on the checkpoint's state."
            )
        return iter(self.dataloader)

    def save_state(self, state: dict) -> None:
        """Put every process's stream state, in process order, into the trainer state `state` (a collective: call
        it on every process, before the main process writes the checkpoint)."""
        state[STREAM_STATE_KEY] = gather_object([self.dataloader.state_dict()])

    def load_state(self, state: dict) -> None:
        """Continue the stream where the trainer state `state` (fresh, or a checkpoint's) left it."""
        streams = state.get(STREAM_STATE_KEY)
        if streams is None:
            if state["global_step"] or state["batches_in_epoch"]:
                raise ValueError("The checkpoint holds no stream state: it was not written by a --streaming run.")
            return
        if len(streams) != self.num_processes:
            raise ValueError(f"The checkpoint's data stream was split over {len(streams)} processes; resume it with "
                             f"{len(streams)} processes (this run has {self.num_processes}).")
        self.dataloader.load_state_dict(streams[self.process_index])

    def fingerprint(self, split: str) -> dict:
        """What the run fingerprint records of the data (`data.fingerprint.data_fingerprint` needs a length)."""
        return {"name": self.description, "split": split, "size": self.num_examples, "streamed": True,
                "num_shards": self.examples.num_shards}


def build_streaming_training_data(args, accelerator, grid: dict[str, int], mask_collator=None) -> StreamingTrainingData:
    """The run's `StreamingTrainingData` over the model's token `grid` (`pipeline.input_grid`): this process's stream,
    crops of the grid's image size, unreadable images dropped and counted, and, with `mask_collator`, the masks of
    every global batch (without, batches of pixels alone). Sets `args.data_path` as `pipeline.build_image_dataset`
    does (the model card's hyperparameters record it)."""
    check_streaming_arguments(args)
    source = args.dataset_name or args.train_dir
    examples = load_streaming_images(
        source, args.train_split, args.image_column_name, args.seed, args.shuffle_buffer_size,
        rank=accelerator.process_index, world_size=accelerator.num_processes, config_name=args.dataset_config_name,
        cache_dir=args.cache_dir,
    )
    collate = default_collate
    if mask_collator is not None:
        collate = GlobalBatchMaskCollate(mask_collator, args.per_device_train_batch_size, accelerator.num_processes,
                                         accelerator.process_index, num_views=args.num_views)
    collate = SkipUnreadable(collate)
    transform = pretraining_transform(grid["image_size"], tuple(args.crop_scale), args.horizontal_flip,
                                      args.num_views)
    dataloader = StreamingDataLoader(examples, StreamedImages(transform, args.seed), collate,
                                     args.per_device_train_batch_size, num_workers=args.dataloader_num_workers,
                                     device=accelerator.device)
    args.data_path = "streamed"
    return StreamingTrainingData(
        examples, collate, dataloader, str(source), grid,
        batches_per_epoch=args.max_train_steps * args.gradient_accumulation_steps,
        process_index=accelerator.process_index, num_processes=accelerator.num_processes,
    )


def check_streaming_arguments(args) -> None:
    """Refuse, naming the option, what a stream cannot do: it has no length, so no epoch-based setting applies."""
    if args.max_train_steps is None:
        raise ValueError("--streaming needs --max_train_steps: a streamed dataset has no length, so --num_train_epochs "
                         "cannot say how many steps to train.")
    if args.dataset_name is None and args.train_dir is None:
        raise ValueError("--streaming needs --dataset_name: a Hub id, or a folder of parquet or webdataset shards.")
    if args.warmup_epochs and args.warmup_steps is None:
        raise ValueError("--warmup_epochs needs a dataset length: with --streaming, give the warmup as --warmup_steps.")
    refused = {
        "--modality video": args.modality != "image",
        "--in_memory_data": args.in_memory_data,
        "--max_train_samples": args.max_train_samples is not None,
        "--checkpointing_steps epoch": args.checkpointing_steps == "epoch",
        "--clip_grad_after_warmup": args.clip_grad_after_warmup,
    }
    for option, given in refused.items():
        if given:
            raise ValueError(f"{option} cannot be used with --streaming (streamed images have no length or epochs).")


def write_parquet_shards(
    dataset: Dataset, folder, num_shards: int, split: str = "train", seed: int | None = 0
) -> list[Path]:
    """Write `dataset` as `num_shards` parquet files `folder/data/{split}-0000i-of-0000n.parquet`, the Hub layout
    that `load_dataset(folder, streaming=True)` (and `--streaming --dataset_name folder`) reads as split `split`.

    A stream is shuffled only within its buffer and by shard order, so the rows are shuffled with `seed` first
    (None keeps their order): shards of data sorted by class would otherwise give batches of one class."""
    if not 1 <= num_shards <= len(dataset):
        raise ValueError(f"Cannot write {len(dataset)} examples as {num_shards} shards.")
    if seed is not None:
        dataset = dataset.shuffle(seed=seed)
    data = Path(folder) / "data"
    data.mkdir(parents=True, exist_ok=True)
    paths = [data / f"{split}-{index:05d}-of-{num_shards:05d}.parquet" for index in range(num_shards)]
    for index, path in enumerate(paths):
        dataset.shard(num_shards, index, contiguous=True).to_parquet(str(path))
    return paths
