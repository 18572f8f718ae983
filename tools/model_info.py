#!/usr/bin/env python
"""Print a model preset's exact parameter count and its training FLOPs per token (the MFU numerator).

FLOPs/token = 6 * N_matmul + 12 * L * h * s, with no causal discount. N_matmul counts every weight
that enters a matmul, including the output projection, and excludes the input embedding (a lookup)
and the RMSNorm gains. The parameter count comes from the configuration and is checked against the
model built on the meta device, which allocates no memory.
"""

import argparse
import json
import sys
from dataclasses import replace

from megasci.model.config import PRESETS, flops_per_token, num_matmul_parameters, num_parameters, parameter_breakdown


def _meta_count(cfg) -> int:
    from megasci.model.llama import build_model

    return sum(p.numel() for p in build_model(cfg, device="meta").parameters())


def _vocab_note(cfg) -> list[str]:
    """Why the paper's "1.36B" does not follow from its own table (vocab 102,400)."""
    per_token = 2 * cfg.hidden_size  # one input row plus one output row per vocabulary entry
    body = num_parameters(cfg, embeddings=False)
    lines = ['Note: the paper calls this model "1.36B", which its table does not give:']
    for v in (cfg.vocab_size, 32_000, 32_256, 32_768):
        n = num_parameters(replace(cfg, vocab_size=v))
        lines.append(f"  vocab {v:>7,}: {n:>13,} parameters ({n / 1e9:.3f}B)")
    tied = body + cfg.vocab_size * cfg.hidden_size
    exact = (1.36e9 - body) / per_token
    lines += [
        f"  vocab {cfg.vocab_size:,} with tied embeddings: {tied:,} ({tied / 1e9:.3f}B)",
        f"  1.36B exactly would need a vocabulary of ~{exact:,.0f} (untied).",
        "  So 1.36B matches a ~32k vocabulary (1.345-1.349B, loosely rounded), not 102,400.",
    ]
    return lines


def report(cfg, seq_lens) -> dict:
    b = parameter_breakdown(cfg)
    total = num_parameters(cfg)
    meta = _meta_count(cfg)
    if meta != total:
        raise AssertionError(f"analytic count {total:,} != meta-device model {meta:,}")
    return {
        "preset": cfg.name,
        "parameters": total,
        "non_embedding_parameters": num_parameters(cfg, embeddings=False),
        "input_embedding": b["input_embedding"],
        "output_embedding": b["output_embedding"],
        "norm_parameters": b["norms"],
        "n_matmul": num_matmul_parameters(cfg),
        "flops_per_token": {str(s): flops_per_token(cfg, s) for s in seq_lens},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="1p36b", choices=sorted(PRESETS))
    p.add_argument("--seq-len", type=int, nargs="+", default=[768, 4096])
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = p.parse_args(argv)
    cfg = PRESETS[args.preset]
    r = report(cfg, args.seq_len)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(
        f"preset {cfg.name}: hidden {cfg.hidden_size}, {cfg.n_layers} layers, {cfg.n_heads} heads "
        f"({cfg.n_kv_heads} KV), FFN {cfg.ffn_hidden_size}, vocab {cfg.vocab_size:,}, "
        f"context {cfg.max_seq_len}, RoPE theta {cfg.rope_theta:g}, {cfg.dtype}"
    )
    print(f"parameters            {r['parameters']:>15,}  ({r['parameters'] / 1e9:.3f}B, checked on the meta device)")
    print(f"  non-embedding       {r['non_embedding_parameters']:>15,}  (blocks + norms)")
    print(f"  input embedding     {r['input_embedding']:>15,}")
    print(f"  output embedding    {r['output_embedding']:>15,}  (untied)")
    print(
        f"N_matmul              {r['n_matmul']:>15,}  (all matmul weights incl. the output projection;\n"
        f"{'':22}excluding the input embedding lookup and the {r['norm_parameters']:,} norm gains)"
    )
    print("FLOPs per token, 6*N_matmul + 12*L*h*s (training, no causal discount):")
    for s, f in r["flops_per_token"].items():
        print(f"  s = {s:>5}           {f:>15,}  ({f / 1e9:.3f} GFLOP)")
    if cfg.name == "1p36b":
        print("\n".join(_vocab_note(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
