# SPDX-License-Identifier: Apache-2.0
"""What a finished run leaves: the exported encoder, the pretraining model, the curves and the model card in
--output_dir, and, with --push_to_hub, the same folder on the Hub."""

import json
from pathlib import Path

from accelerate.logging import get_logger

from modeling_ijepa.evaluation.pretraining_probe import probe_against_random_init
from modeling_ijepa.hub.export import export_vjepa2, save_encoder_for_transformers
from modeling_ijepa.hub.model_card import plot_training_curves, write_model_card
from modeling_ijepa.hub.pretraining_card import MODEL_CARD_TEMPLATE
from modeling_ijepa.training.checkpointing import (
    check_finite_state,
)
from modeling_ijepa.training.run_control import (
    LOCK_FILE,
)

logger = get_logger(__name__)


def export_final_model(accelerator, model, args, log_history, card_values, card_data) -> None:
    """Write the exported encoder at the root of --output_dir, the pretraining model beside it, the curves
    and the model card; then push to the Hub if asked."""
    output_dir = Path(args.output_dir)
    unwrapped = accelerator.unwrap_model(model)
    check_finite_state(unwrapped, None, output_dir / "pretraining")
    unwrapped.save_pretrained(output_dir / "pretraining")
    if args.modality == "image":
        save_encoder_for_transformers(unwrapped.export_encoder(), output_dir)
    elif args.architecture == "vjepa2":
        export_vjepa2(unwrapped, output_dir)
    else:
        unwrapped.export_encoder().save_pretrained(output_dir)
    with open(output_dir / "training_log.jsonl", "w") as file:
        file.writelines(json.dumps(entry) + "\n" for entry in log_history)
    plot_training_curves(log_history, output_dir / "training_curves.png")
    if args.probe_after_training and args.modality == "image":
        card_values["probe"] = probe_against_random_init(args, accelerator, output_dir)
    write_model_card(output_dir, MODEL_CARD_TEMPLATE, card_values, card_data)
    if args.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi(token=args.hub_token)
        repo_id = api.create_repo(args.hub_model_id, exist_ok=True, private=args.hub_private_repo).repo_id
        api.upload_folder(
            repo_id=repo_id, folder_path=output_dir, commit_message="Upload pretrained JEPA encoder",
            ignore_patterns=["checkpoint-*", "checkpoint-*/**", ".tmp-checkpoint-*", ".tmp-checkpoint-*/**", LOCK_FILE,
                             "probe/**/features_*"],
        )
        logger.info(f"Pushed {output_dir} to https://huggingface.co/{repo_id}")
