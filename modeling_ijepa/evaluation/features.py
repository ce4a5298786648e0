# SPDX-License-Identifier: Apache-2.0
"""Frozen features: extraction (mean over tokens, or every token for video) and their on-disk cache keyed by a
fingerprint of the model files, the data and the preprocessing."""

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from modeling_ijepa.modeling_ijepa import layer_normed_last_blocks

logger = logging.getLogger(__name__)


@dataclass
class LabelledFeatures:
    """Frozen features of one split, with their labels, on the CPU.

    Attributes:
        features: `[N, D]` float32, mean-pooled over tokens, or `[N, T, D]`, every token (video, for the attentive
            probe).
        labels: `[N]` int64 class indices.
        num_skipped: examples left out because they could not be read (with their labels).
    """

    features: torch.Tensor
    labels: torch.Tensor
    num_skipped: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def pooled(self) -> torch.Tensor:
        """`[N, D]`: the features, averaged over tokens when they are kept per token."""
        return self.features.mean(dim=1) if self.features.ndim == 3 else self.features

    def subset(self, indices: torch.Tensor) -> "LabelledFeatures":
        """The examples at `indices` (`[M]` int64); the count of skipped examples stays that of the whole split."""
        return LabelledFeatures(self.features[indices], self.labels[indices], self.num_skipped)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of a feature cache file: `features`, `labels` and `num_skipped` ([] int64)."""
        return {"features": self.features, "labels": self.labels, "num_skipped": torch.tensor(self.num_skipped)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "LabelledFeatures":
        return cls(tensors["features"], tensors["labels"], int(tensors["num_skipped"]))


def describe_layers(feature_layers: int) -> str:
    """How results and cards name the layers `select_tokens` reads."""
    return "last layer" if feature_layers == 1 else f"last {feature_layers} layers, concatenated"


def select_tokens(outputs, feature_layers: int) -> torch.Tensor:
    """Token features [B, N, D] (one layer) or [B, N, K*D] (the last K layers, concatenated over channels).

    With `feature_layers=1` these are the model's `last_hidden_state`, after its final (affine) LayerNorm. With
    K > 1 they are the outputs of the last K blocks taken from `hidden_states`, which in transformers' I-JEPA are
    captured before the final LayerNorm; each block output is layer-normed over channels without affine parameters
    (as I-JEPA normalises its targets) so that the K layers enter the concatenation on the same scale. Using the
    final LayerNorm's affine parameters on earlier layers would apply weights trained for the last layer only.
    """
    if feature_layers == 1:
        return outputs.last_hidden_state
    num_blocks = len(outputs.hidden_states) - 1  # hidden_states[0] is the embedding output
    if feature_layers > num_blocks:
        raise ValueError(f"--feature_layers {feature_layers} exceeds the model's {num_blocks} layers.")
    return torch.cat(layer_normed_last_blocks(outputs.hidden_states, feature_layers), dim=-1)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataloader: torch.utils.data.DataLoader,
    input_name: str,
    feature_layers: int = 1,
    pool_tokens: bool = True,
    accelerator=None,
    description: str = "Extracting features",
    skip_tokens: int = 0,
    forward_arguments: dict | None = None,
) -> LabelledFeatures:
    """Run the frozen `model` over `dataloader` and collect features and labels on the CPU.

    The first `skip_tokens` tokens (a CLS token, for encoders that have one) are left out. `forward_arguments` go to
    every call of `model` (`{"skip_predictor": True}` runs stock `VJEPA2Model`'s encoder alone).
    Batches are dicts with `input_name` (`pixel_values` or `pixel_values_videos`), `labels`, and optionally
    `num_skipped` (unreadable examples that `image_data.SkipUnreadable` dropped together with their labels).

    Returns:
        `LabelledFeatures`: features `[N, D]` (pooled) or `[N, T, D]` (tokens) float32, labels `[N]` int64.
    """
    model.eval()
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    features, labels, num_skipped = [], [], 0
    disable = accelerator is not None and not accelerator.is_local_main_process
    for batch in tqdm(dataloader, desc=description, disable=disable):
        num_skipped += int(batch.get("num_skipped", 0))
        if input_name not in batch:  # every example of this batch was unreadable
            continue
        inputs = batch[input_name].to(device)
        with accelerator.autocast() if accelerator is not None else torch.autocast(device.type, enabled=False):
            outputs = model(
                **{input_name: inputs}, output_hidden_states=feature_layers > 1, **(forward_arguments or {})
            )
        tokens = select_tokens(outputs, feature_layers)[:, skip_tokens:].float()
        features.append((tokens.mean(dim=1) if pool_tokens else tokens).cpu())
        labels.append(torch.as_tensor(batch["labels"], dtype=torch.long))
    if not features:
        raise ValueError(f"{description}: no readable example (skipped {num_skipped}).")
    return LabelledFeatures(torch.cat(features), torch.cat(labels), num_skipped)


def fingerprint(parts: dict) -> str:
    """A short stable hash of a JSON-able description (what a cached feature file was computed from)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_files_fingerprint(model_name_or_path: str) -> dict:
    """What identifies a model's weights on disk: path, size and modification time of the files a loader reads
    (a checkpoint file, or a folder's `config.json` and weight files; other files such as a model card or probe
    results do not invalidate the cache). A Hub id is identified by its name and the commit of the snapshot that
    loading it put in the local Hub cache."""
    path = Path(model_name_or_path).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    else:
        cached_config = try_to_load_from_cache(model_name_or_path, "config.json")
        return {
            "hub_id": model_name_or_path,
            "commit": Path(cached_config).parent.name if isinstance(cached_config, str) else None,
        }
    return {"path": str(path.resolve()), "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]}


def cached_features(path: Path, compute: Callable[[], LabelledFeatures]) -> tuple[LabelledFeatures, bool]:
    """Load the features stored at `path`, or compute and store them there (written to a temporary file, then
    renamed, so an interrupted run never leaves a truncated cache). Returns the features and whether they came
    from the cache."""
    if path.is_file():
        logger.info("Loading cached features from %s (extraction skipped).", path)
        return LabelledFeatures.from_tensors(load_file(path)), True
    features = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({name: tensor.contiguous() for name, tensor in features.to_tensors().items()}, temporary)
    os.replace(temporary, path)
    logger.info("Cached features in %s.", path)
    return features, False


@contextmanager
def timed(timings: dict, name: str):
    """Store the wall time of the `with` block in `timings[name]` (seconds)."""
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 3)
