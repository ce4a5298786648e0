# SPDX-License-Identifier: Apache-2.0
"""Feature extraction: our IJepaModel against stock transformers.IJepaModel, same weights, same attention.

    python -m benchmarks.feature_extraction      # ViT-B/16 at 224, batch 64, eval, no grad

Writes benchmarks/results/feature_extraction.json with images/s of both and their ratio, per attention backend.
Both take turns batch by batch; the ratio is the median of per-round ratios.
"""

import argparse
import statistics

import torch
from transformers.models.ijepa.modeling_ijepa import IJepaModel as StockIJepaModel

from benchmarks.common import interleaved_seconds, machine, markdown_table, per_round_ratios, write_results
from modeling_ijepa import IJepaConfig, IJepaModel


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=8, help="Rounds; each times one batch of both.")
    parser.add_argument("--attn_implementations", nargs="+", default=["sdpa", "eager"])
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = IJepaConfig(image_size=args.image_size, patch_size=16, hidden_size=768, num_hidden_layers=12,
                         num_attention_heads=12, intermediate_size=3072)
    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    rows = []
    for attn in args.attn_implementations:
        torch.manual_seed(0)
        ours = IJepaModel._from_config(config, attn_implementation=attn).to(device).eval()
        stock = StockIJepaModel._from_config(config.stock_config(), attn_implementation=attn).to(device).eval()
        stock.load_state_dict(ours.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(ours(pixel_values[:2]).last_hidden_state,
                                       stock(pixel_values[:2]).last_hidden_state)
            seconds = interleaved_seconds({"stock": lambda: stock(pixel_values), "ours": lambda: ours(pixel_values)},
                                          repeats=args.repeats, warmup=1)
        ratios = per_round_ratios(seconds["stock"], seconds["ours"])
        rows.append({"attn_implementation": attn, "batch_size": args.batch_size,
                     "stock_images_per_s": args.batch_size / statistics.median(seconds["stock"]),
                     "ours_images_per_s": args.batch_size / statistics.median(seconds["ours"]),
                     "ratio": statistics.median(ratios), "ratio_range": [ratios[0], ratios[-1]]})
    print(markdown_table(rows, list(rows[0])))
    results = {"machine": machine(), "device": device, "image_size": args.image_size, "repeats": args.repeats,
               "rows": rows}
    print(f"wrote {write_results('feature_extraction', results)}")


if __name__ == "__main__":
    main()
