"""Feature extraction: our IJepaModel against stock transformers.IJepaModel, same weights, same attention.

    python benchmarks/feature_extraction.py      # ViT-B/16 at 224, batch 64, eval, no grad

Writes benchmarks/results/feature_extraction.json with images/s of both and their ratio, per attention backend.
"""

import argparse
import sys
from pathlib import Path

import torch
from transformers.models.ijepa.modeling_ijepa import IJepaModel as StockIJepaModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine, markdown_table, median_seconds, write_results  # noqa: E402

from modeling_ijepa import IJepaConfig, IJepaModel  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
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
            torch.testing.assert_close(ours(pixel_values[:2]).last_hidden_state, stock(pixel_values[:2]).last_hidden_state)
            timings = {"stock": [], "ours": []}
            for _ in range(args.repeats):  # interleaved, so both see the same machine state
                timings["stock"].append(median_seconds(lambda: stock(pixel_values), repeats=1, warmup=0))
                timings["ours"].append(median_seconds(lambda: ours(pixel_values), repeats=1, warmup=0))
        stock_seconds, ours_seconds = min(timings["stock"]), min(timings["ours"])
        rows.append({"attn_implementation": attn, "batch_size": args.batch_size,
                     "stock_images_per_s": args.batch_size / stock_seconds,
                     "ours_images_per_s": args.batch_size / ours_seconds, "ratio": stock_seconds / ours_seconds})
    print(markdown_table(rows, list(rows[0])))
    print(f"wrote {write_results('feature_extraction', {'machine': machine(), 'device': device, 'image_size': args.image_size, 'rows': rows})}")


if __name__ == "__main__":
    main()
