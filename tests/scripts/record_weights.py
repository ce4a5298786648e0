# SPDX-License-Identifier: Apache-2.0
"""Run pretraining under `accelerate launch` and record every process's weights after every step.

Writes `{record_dir}/rank{i}.json` (a checksum of all parameters, target encoder included, per step) and
`{record_dir}/rank{i}.safetensors` (the final weights). Used by the multi-process tests."""

import hashlib
import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from modeling_ijepa.training.arguments import parse_args
from modeling_ijepa.training.pretraining import train


def checksum(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main():
    record_dir = Path(sys.argv[1])
    checksums = {}

    def record(accelerator, model, step):
        checksums[step] = checksum(model)

    accelerator, model, _, _ = train(parse_args(sys.argv[2:]), step_callback=record)
    rank = accelerator.process_index
    (record_dir / f"rank{rank}.json").write_text(json.dumps(checksums))
    unwrapped = accelerator.unwrap_model(model)
    save_file({k: v.contiguous() for k, v in unwrapped.state_dict().items()}, record_dir / f"rank{rank}.safetensors")
    accelerator.end_training()


if __name__ == "__main__":
    main()
