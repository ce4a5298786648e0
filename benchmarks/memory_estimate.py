# SPDX-License-Identifier: Apache-2.0
"""GPU memory per process of I-JEPA ViT-H/14 and ViT-g/14 pretraining under DDP and FSDP2, from counts on the meta
device (no GPU needed).

    python -m benchmarks.memory_estimate --world_size 16

The model is built on the meta device, so nothing is allocated. Parameters are counted per network (context
encoder and predictor are trained; the target encoder is an EMA copy with no gradient and no optimizer state).
Activations are what autograd saves for the backward pass of one training forward at batch 128 per GPU, with
masks drawn by the run's own collator at the paper's settings (4 target blocks of 15-20 %, context 85-100 %):
a `saved_tensors_hooks` pair records every tensor saved for backward, with the model in bf16 as autocast runs its
matrix products. Attention is counted as a fused kernel (flash / memory-efficient SDPA) keeps it: a saved
`[batch, heads, L, L]` probability matrix is left out and reported apart.

Per GPU, for mixed precision in bf16 with float32 master weights (Accelerate's `--mixed_precision bf16`):
- DDP: float32 weights of all three networks (4 B each), float32 gradients of the trained ones (4 B) and a second
  copy in DDP's gradient buckets (4 B), AdamW's two moments (8 B), and the activations.
- FSDP2 over `world_size` processes: the same weights, gradients and moments divided by `world_size` (the EMA target
  is sharded like the context encoder), plus the bf16 weights of the two transformer blocks that are gathered at a
  time (the running one and the prefetched one), and the same activations (they are not sharded); with activation
  checkpointing only each block's input is kept, plus one block's activations for the recomputation.

Not counted: the CUDA context and allocator fragmentation (typically 1-3 GiB), the target encoder's transient
forward activations (no grad) and the communication buffers. The numbers are estimates, not measurements.
"""

import argparse
from dataclasses import dataclass

import torch

from benchmarks.common import markdown_table, write_results
from modeling_ijepa import IJepaConfig, IJepaForPreTraining, MultiBlockMaskCollator

GIB = 1024**3

# ViT-H/14 as in the I-JEPA paper's recipe (configs/in1k_vith14_ep300.yaml); ViT-g/14 with the ViT-g width and depth
# (Zhai et al., 2022: 1408 wide, 40 blocks, MLP 6144) and the same predictor.
MODELS = {
    "ViT-H/14": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16, "intermediate_size": 5120},
    "ViT-g/14": {"hidden_size": 1408, "num_hidden_layers": 40, "num_attention_heads": 16, "intermediate_size": 6144},
}
PREDICTOR = {"predictor_hidden_size": 384, "predictor_num_hidden_layers": 12, "predictor_num_attention_heads": 16}


@dataclass
class SavedActivations:
    """Bytes autograd saves for backward, split into attention matrices and everything else."""

    attention_bytes: int = 0
    other_bytes: int = 0
    block_input_bytes: int = 0  # the inputs of every trained block call: what activation checkpointing keeps


def count_parameters(network: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in network.parameters())


def saved_activations(model: IJepaForPreTraining, batch_size: int, seed: int) -> SavedActivations:
    """What one training forward saves for backward on the meta device, with masks from the run's collator."""
    config = model.config
    collator = MultiBlockMaskCollator(config.image_size, config.patch_size, seed=seed)
    context_indices, target_indices = collator.sample_indices(batch_size)
    pixel_values = torch.empty(batch_size, 3, config.image_size, config.image_size, device="meta", dtype=torch.bfloat16)
    counts, seen = SavedActivations(), set()

    def pack(tensor):
        key = id(tensor._base if tensor._base is not None else tensor)
        if key not in seen and tensor.is_floating_point():
            seen.add(key)
            size = tensor.numel() * tensor.element_size()
            # [batch, heads, L, L]: attention probabilities, which a fused attention kernel does not keep.
            square = tensor.dim() == 4 and tensor.shape[1] == config.num_attention_heads and tensor.shape[-1] > 1 \
                and tensor.shape[-1] == tensor.shape[-2]
            if square:
                counts.attention_bytes += size
            else:
                counts.other_bytes += size
        return tensor

    def record_block_input(module, args):
        counts.block_input_bytes += args[0].numel() * args[0].element_size()

    trained_blocks = [*model.context_encoder.layers, *model.predictor.layers]
    hooks = [layer.register_forward_pre_hook(record_block_input) for layer in trained_blocks]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(pixel_values=pixel_values, context_indices=context_indices.to("meta"),
              target_indices=target_indices.to("meta"))
    for hook in hooks:
        hook.remove()
    return counts


def estimate(name: str, batch_size: int, world_size: int, seed: int, sizes: dict | None = None) -> dict:
    """One row of the table: the memory per GPU of model `name` (or of a config with `sizes`)."""
    sizes = sizes or {"image_size": 224, "patch_size": 14, **MODELS[name], **PREDICTOR}
    config = IJepaConfig(attn_implementation="sdpa", **sizes)
    with torch.device("meta"):
        model = IJepaForPreTraining(config).to(torch.bfloat16)
    trained = count_parameters(model.context_encoder) + count_parameters(model.predictor)
    target = count_parameters(model.target_encoder)
    activations = saved_activations(model, batch_size, seed)
    block = count_parameters(model.context_encoder.layers[0])
    layers = config.num_hidden_layers + config.predictor_num_hidden_layers
    # Under activation checkpointing each block keeps its input; one block's saved tensors exist at a time, while
    # it is recomputed (an average block's share of the total).
    checkpointed = activations.block_input_bytes + activations.other_bytes / layers

    ddp_states = 4 * (trained + target) + (4 + 4 + 8) * trained
    fsdp_states = (4 * (trained + target) + (4 + 8) * trained) / world_size + 2 * 2 * block
    return {
        "model": name,
        "trained_parameters": trained,
        "target_parameters": target,
        "trained_parameters_m": round(trained / 1e6),
        "target_parameters_m": round(target / 1e6),
        "activations_gib": round(activations.other_bytes / GIB, 1),
        "attention_matrices_gib": round(activations.attention_bytes / GIB, 1),
        "ddp_gib": round((ddp_states + activations.other_bytes) / GIB, 1),
        "fsdp2_gib": round((fsdp_states + activations.other_bytes) / GIB, 1),
        "fsdp2_checkpointed_gib": round((fsdp_states + checkpointed) / GIB, 1),
        "ddp_states_gib": round(ddp_states / GIB, 1),
        "fsdp2_states_gib": round(fsdp_states / GIB, 2),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_estimate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=128, help="Images per GPU (the paper: 128).")
    parser.add_argument("--world_size", type=int, default=16, help="GPUs FSDP2 shards over (the paper: 16).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the mask draw.")
    args = parser.parse_args(argv)
    rows = [estimate(name, args.batch_size, args.world_size, args.seed) for name in MODELS]
    payload = {
        "description": f"Estimated GPU memory per process, I-JEPA at 224 px, batch {args.batch_size} per GPU, bf16 "
                       f"mixed precision, FSDP2 over {args.world_size} GPUs; see the module docstring for what is "
                       "counted.",
        "batch_size": args.batch_size, "world_size": args.world_size, "rows": rows,
    }
    write_results("memory_estimate", payload)
    print(markdown_table(rows, ["model", "trained_parameters_m", "activations_gib", "ddp_gib", "fsdp2_gib",
                                "fsdp2_checkpointed_gib"]))
    return payload


if __name__ == "__main__":
    main()
