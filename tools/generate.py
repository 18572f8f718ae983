#!/usr/bin/env python
"""Continue a prompt with a trained checkpoint: greedy or sampled (temperature, top-k, top-p), KV-cached.

Prints each prompt followed by its continuation (up to the first EOS) on stdout, and the speed on
stderr. The tokenizer is the one copied into the checkpoint unless --tokenizer names another. Prompts
are prefixed with the end-of-document token by default, since in training every document but the first
follows one; --no-eod-prefix feeds the prompt as it is.

Example:
    python tools/generate.py --checkpoint runs/1p36b/checkpoints --prompt '\\begin{abstract}' \\
        --max-new-tokens 200 --temperature 0.8 --top-p 0.95 --seed 0
"""

import argparse
import sys
import time

import torch

from megasci.model.dtypes import DTYPES
from megasci.model.generate import generate
from megasci.tokenizer import load_tokenizer
from megasci.training.checkpoint import checkpoint_tokenizer_path, load_model, resolve_checkpoint



def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a save directory (its latest)")
    p.add_argument("--prompt", action="append", default=[], help="prompt text; repeat for several prompts")
    p.add_argument("--prompt-file", action="append", default=[], help="a file whose whole text is one prompt")
    p.add_argument("--tokenizer", default=None, help="default: the tokenizer saved in the checkpoint")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling; 1 = off")
    p.add_argument("--top-k", type=int, default=None, help="keep only the k most likely tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-eod-prefix", action="store_true", help="do not start the prompt with the EOD token")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: the training dtype")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1:
        p.error("--max-new-tokens must be at least 1")
    try:
        prompts = list(args.prompt)
        for path in args.prompt_file:
            with open(path, encoding="utf-8") as f:
                prompts.append(f.read())
        if not prompts:
            p.error("give --prompt or --prompt-file")
        path = resolve_checkpoint(args.checkpoint)
        tokenizer_path = args.tokenizer or checkpoint_tokenizer_path(path)
        if tokenizer_path is None:
            raise FileNotFoundError(f"{path} holds no tokenizer.model; pass --tokenizer")
        tok = load_tokenizer(tokenizer_path)
        model, _ = load_model(path, device=args.device, dtype=DTYPES.get(args.dtype))
        model.eval()
        if tok.vocab_size > model.cfg.vocab_size:
            raise ValueError(f"tokenizer has {tok.vocab_size} tokens, the model only {model.cfg.vocab_size}")
        generator = torch.Generator(args.device).manual_seed(args.seed)
        for i, prompt in enumerate(prompts):
            prefix = [] if args.no_eod_prefix else [tok.eod_id]
            ids = prefix + tok.encode(prompt)
            start = time.perf_counter()
            out = generate(model, ids, args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           top_k=args.top_k, eos_id=tok.eos_id, generator=generator)[0].tolist()
            seconds = time.perf_counter() - start
            new = out[len(ids):]
            speed = len(new) / seconds  # the EOS counts: it was generated too
            if tok.eos_id in new:
                new = new[: new.index(tok.eos_id)]
            if i:
                print("\n" + "-" * 80)
            print(tok.decode(out[len(prefix): len(ids)] + new))
            print(f"[{len(ids)} prompt tokens, {len(new)} new in {seconds:.2f} s: "
                  f"{speed:.1f} tokens/s on {args.device}]", file=sys.stderr)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
