# SPDX-License-Identifier: Apache-2.0
"""What identifies a training set in a run's fingerprint, so that a resume on other data is refused."""

import hashlib

import torch

# How many examples from the start of a data set its fingerprint hashes.
FINGERPRINT_EXAMPLES = 16


def data_fingerprint(dataset, name: str | None, split: str | None) -> dict:
    """Name, split, size and a hash of the first examples' keys of a training set: a `datasets.Dataset` (its raw
    rows: file paths and bytes, labels; not the decoded images), a `VideoClipDataset` (its video names), or a
    `torch.utils.data.Subset` of either, or images decoded into a tensor
    (their pixels). Other datasets are described by name, split and size only."""
    indices = range(min(FINGERPRINT_EXAMPLES, len(dataset)))
    while isinstance(dataset, torch.utils.data.Subset):
        indices = [dataset.indices[index] for index in indices]
        dataset = dataset.dataset
    if hasattr(dataset, "video_names"):
        keys = [dataset.video_names[index] for index in indices]
    elif hasattr(dataset, "with_format"):
        # Arrow rows: undecoded (an image is its path and bytes), whatever the dataset's format and transform.
        keys = dataset.with_format("arrow")[list(indices)].to_pylist()
    elif isinstance(dataset, torch.Tensor):
        # Images decoded into memory (`in_memory_images`): their pixels.
        keys = hashlib.sha256(dataset[list(indices)].contiguous().numpy().tobytes()).hexdigest()
    else:
        keys = None
    fingerprint = {"name": name, "split": split, "size": len(dataset)}
    if keys is not None:
        fingerprint["first_examples_sha256"] = hashlib.sha256(repr(keys).encode()).hexdigest()
    return fingerprint
