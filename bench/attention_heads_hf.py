"""Heads, MLP neurons and the hidden size removed from Hugging Face BERT, GPT-2 and LLaMA: how much smaller.

Random initialisation from configs (no downloads: the ratios depend on shapes only), 4 layers each
at realistic widths: BERT-base (768, 12 heads, 3072), GPT-2 small (768, 12 heads, 3072, vocabulary
50257) and a LLaMA with grouped-query attention (1024, 16 query / 4 key-value heads, 2816,
vocabulary 32000). Each model is pruned once with ``prune_channels(ratio=R, method="l1",
ratios={<base model>: H})``: every layer loses R of its heads (key / value groups with GQA) and
MLP hidden neurons, and the hidden size (the residual stream, ``secateur.structured.hf_hidden``)
loses H. Counted before and after, on one sequence of ``--tokens`` tokens:

- ``params``: every parameter once (tied ones once);
- ``macs (all)``: every multiply-accumulate, from torch's FLOP counter (FLOPs / 2), attention's
  products and the task head included;
- ``macs (body)``: the same without the task head (the base model alone): a vocabulary head is
  never pruned, and on 4 layers it dominates a language model's MACs.

    python bench/attention_heads_hf.py [--models bert-cls,gpt2-lm,...] [--ratio 0.5] [--hidden 0.25]
                                       [--tokens 128] [--json FILE] [--md FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import secateur  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads)
from secateur.structured import prune_channels
from secateur.structured.hf_hidden import stream_of

RESULTS = Path(__file__).resolve().parent / "results"


def _bert(cls_name: str) -> nn.Module:
    import transformers

    config = transformers.BertConfig(num_hidden_layers=4, num_labels=2)  # BERT-base shapes otherwise
    return getattr(transformers, cls_name)(config)


def _gpt2(cls_name: str) -> nn.Module:
    import transformers

    config = transformers.GPT2Config(n_layer=4, num_labels=2, pad_token_id=0)  # GPT-2 small shapes otherwise
    return getattr(transformers, cls_name)(config)


def _llama(cls_name: str) -> nn.Module:
    import transformers

    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                                      num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=512,
                                      num_labels=2, pad_token_id=0)
    return getattr(transformers, cls_name)(config)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "bert-cls": lambda: _bert("BertForSequenceClassification"),
    "gpt2-lm": lambda: _gpt2("GPT2LMHeadModel"),
    "gpt2-cls": lambda: _gpt2("GPT2ForSequenceClassification"),
    "llama-lm": lambda: _llama("LlamaForCausalLM"),
    "llama-cls": lambda: _llama("LlamaForSequenceClassification"),
}


def macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass (FLOPs / 2), every matmul included."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def heads(model: nn.Module) -> int:
    """Query heads over every attention layer."""
    total = 0
    for m in model.modules():
        if hasattr(m, "num_attention_heads") and hasattr(m, "all_head_size"):  # BERT's self-attention
            total += int(m.num_attention_heads)
        elif hasattr(m, "q_proj") and hasattr(m, "head_dim"):  # LLaMA
            total += m.q_proj.out_features // int(m.head_dim)
        elif hasattr(m, "c_attn") and hasattr(m, "split_size"):  # GPT-2
            total += int(m.num_heads)
    return total


def measure(model: nn.Module, base: str, x: torch.Tensor) -> dict:
    """Parameters (tied ones once), MACs of the model and of its base alone, heads, hidden size."""
    return {"params": sum(p.numel() for p in model.parameters()), "macs_all": macs(model, x),
            "macs_body": macs(model.get_submodule(base), x), "heads": heads(model),
            "hidden": int(model.config.hidden_size)}


def run(name: str, ratio: float, hidden: float, tokens: int) -> dict:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    layout = stream_of(model)
    assert layout is not None, name
    x = torch.randint(1, 1000, (1, tokens), generator=torch.Generator().manual_seed(0))
    before = measure(model, layout.base, x)
    width = model(x).logits.shape[-1]
    start = time.perf_counter()
    prune_channels(model, x, ratio, method="l1", ratios={layout.base: hidden})
    seconds = time.perf_counter() - start
    after = measure(model, layout.base, x)
    assert model(x).logits.shape[-1] == width  # labels / vocabulary never pruned
    return {"model": name, "class": type(model).__name__, "ratio": ratio, "hidden_ratio": hidden, "tokens": tokens,
            "before": before, "after": after, "prune_seconds": round(seconds, 2),
            "ratios": {k: before[k] / after[k] for k in ("params", "macs_all", "macs_body")}}


def markdown(rows: list[dict]) -> str:
    lines = ["| model | heads | hidden | params | MACs (all) | MACs (body) | params ratio | MACs ratio (all) | "
             "MACs ratio (body) | prune s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, a, q = r["before"], r["after"], r["ratios"]
        lines.append(f"| {r['model']} ({r['class']}) | {b['heads']} -> {a['heads']} | {b['hidden']} -> {a['hidden']} | "
                     f"{b['params'] / 1e6:.1f}M -> {a['params'] / 1e6:.1f}M | {b['macs_all'] / 1e9:.2f}G -> "
                     f"{a['macs_all'] / 1e9:.2f}G | {b['macs_body'] / 1e9:.2f}G -> {a['macs_body'] / 1e9:.2f}G | "
                     f"{q['params']:.2f}x | {q['macs_all']:.2f}x | {q['macs_body']:.2f}x | {r['prune_seconds']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of heads and MLP neurons removed")
    parser.add_argument("--hidden", type=float, default=0.25, help="fraction of the hidden size removed")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--json", type=Path, default=RESULTS / "attention_heads_hf.json")
    parser.add_argument("--md", type=Path, default=RESULTS / "attention_heads_hf.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.models.split(","):
        rows.append(run(name, args.ratio, args.hidden, args.tokens))
        print(markdown(rows[-1:]), flush=True)
    table = markdown(rows)
    print(table)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    title = (f"### Hugging Face transformers: {args.ratio:.0%} of heads and MLP neurons, {args.hidden:.0%} of the "
             f"hidden size (random init, local L1, 4 layers, {args.tokens} tokens)")
    args.md.write_text(title + "\n\n" + table)


if __name__ == "__main__":
    main()
