"""Attention heads and MLP neurons removed from torchvision ViT-B/16 and Swin-T: how much smaller.

Random initialisation (no weights needed: the ratios depend on shapes only). Each model is
pruned once with ``prune_channels(ratio=R, method="l1")`` (local: every group, i.e. every
layer's heads and MLP hidden neurons, loses R of them; the embedding dimension is kept unless
``--embedding`` gives its share: ViT's, and Swin's every stage width), and
its parameters and MACs are counted before and after:

- ``macs (all)``: every multiply-accumulate of one 224x224 image, from torch's FLOP counter
  (``torch.utils.flop_counter``, FLOPs / 2), attention's q·k and attention·v products included;
- ``macs (layers)``: secateur's ``count_macs`` (conv / Linear layers only: it does not see
  ``nn.MultiheadAttention``'s packed in_proj nor the attention products).

    python bench/attention_heads.py [--models vit_b_16,swin_t,swin_v2_t,timm:swin_tiny_patch4_window7_224]
                                    [--ratio 0.5] [--embedding 0.25] [--attention heads|head-dims]
                                    [--json FILE] [--md FILE]

``--attention head-dims`` removes the ratio of every layer's per-head dimension instead of its
heads (the "head dim" column: the first attention layer's).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import secateur  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads)
from secateur.analysis.metrics import count_macs, count_params
from secateur.structured import prune_channels
from secateur.zoo.models import build_model

RESULTS = Path(__file__).resolve().parent / "results"


def all_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass (FLOPs / 2), every matmul included."""
    counter = FlopCounterMode(display=False)
    with counter, torch.enable_grad():  # no_grad would take MultiheadAttention's fused path, which it cannot see
        model(x)
    return counter.get_total_flops() // 2


def head_width(model: torch.nn.Module) -> int:
    """The first attention layer's per-head dimension (0 if none)."""
    for m in model.modules():
        if isinstance(getattr(m, "head_dim", None), int) and hasattr(m, "num_heads"):
            return int(m.head_dim)
        if hasattr(m, "qkv") and hasattr(m, "num_heads"):
            return m.qkv.out_features // (3 * int(m.num_heads))
    return 0


def embedding_width(model: torch.nn.Module, name: str) -> int:
    """Output channels of the layer producing the embedding (Swin: of its first stage)."""
    layer = model.get_submodule(EMBEDDING[name][0])
    return int(getattr(layer, "out_channels", 0))


def heads(model: torch.nn.Module) -> list[int]:
    return [int(m.num_heads) for m in model.modules() if (hasattr(m, "num_heads") and hasattr(m, "head_dim"))
            or "WindowAttention" in type(m).__name__]  # Swin's (torchvision V1 and V2, timm)


# the layers producing the embedding channels (Swin: each stage's, the patch embedding and the patch mergings)
EMBEDDING = {"vit_b_16": ("conv_proj",), "swin_t": ("features.0.0", "features.*.reduction"),
             "swin_v2_t": ("features.0.0", "features.*.reduction"),
             "timm:swin_tiny_patch4_window7_224": ("patch_embed.proj", "layers.*.downsample.reduction")}


def run(name: str, ratio: float, embedding: float | None, attention: str = "heads") -> dict:
    torch.manual_seed(0)
    model = build_model(name if ":" in name else f"torchvision:{name}").eval()  # a bare name is torchvision's
    x = torch.randn(1, 3, 224, 224)
    before = {"params": count_params(model), "macs_all": all_macs(model, x),
              "macs_layers": count_macs(model, (3, 224, 224)), "heads": sum(heads(model)),
              "embedding": embedding_width(model, name), "head_dim": head_width(model)}
    start = time.perf_counter()
    ratios = dict.fromkeys(EMBEDDING.get(name, ()), 0.0 if embedding is None else embedding)
    prune_channels(model, x, ratio, method="l1", ratios=ratios, attention=attention)
    seconds = time.perf_counter() - start
    after = {"params": count_params(model), "macs_all": all_macs(model, x),
             "macs_layers": count_macs(model, (3, 224, 224)), "heads": sum(heads(model)),
             "embedding": embedding_width(model, name), "head_dim": head_width(model)}
    return {"model": name, "ratio": ratio, "embedding_ratio": embedding, "attention": attention,
            "before": before, "after": after,
            "prune_seconds": round(seconds, 2),
            "ratios": {k: before[k] / after[k] for k in ("params", "macs_all", "macs_layers")}}


def markdown(rows: list[dict]) -> str:
    lines = ["| model | heads | head dim | embedding | params | MACs (all) | MACs (layers) | params ratio | "
             "MACs ratio (all) | MACs ratio (layers) | prune s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, a, q = r["before"], r["after"], r["ratios"]
        emb = f" + {r['embedding_ratio']:.0%} embedding" if r.get("embedding_ratio") is not None else ""
        unit = " of head dims" if r.get("attention") == "head-dims" else ""
        lines.append(f"| {r['model']} @ {r['ratio']:.0%}{unit}{emb} | {b['heads']} -> {a['heads']} | "
                     f"{b.get('head_dim', '')} -> {a.get('head_dim', '')} | "
                     f"{b['embedding']} -> {a['embedding']} | "
                     f"{b['params'] / 1e6:.1f}M -> {a['params'] / 1e6:.1f}M | {b['macs_all'] / 1e9:.2f}G -> "
                     f"{a['macs_all'] / 1e9:.2f}G | {b['macs_layers'] / 1e9:.2f}G -> {a['macs_layers'] / 1e9:.2f}G | "
                     f"{q['params']:.2f}x | {q['macs_all']:.2f}x | {q['macs_layers']:.2f}x | {r['prune_seconds']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_b_16,swin_t")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--embedding", type=float, default=None,
                        help="also remove this fraction of the embedding channels (where the analysis follows them)")
    parser.add_argument("--attention", default="heads", help="heads or head-dims (secateur.structured.attention)")
    parser.add_argument("--json", type=Path, default=RESULTS / "attention_heads.json")
    parser.add_argument("--md", type=Path, default=RESULTS / "attention_heads.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [run(name, args.ratio, args.embedding, args.attention) for name in args.models.split(",")]
    table = markdown(rows)
    print(table)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    kept = "embedding dim kept" if args.embedding is None else f"{args.embedding:.0%} of the embedding dim"
    unit = "Attention heads" if args.attention == "heads" else "Per-head dimensions"
    args.md.write_text(f"### {unit} and MLP neurons (random init, local L1, {kept})\n\n" + table)


if __name__ == "__main__":
    main()
