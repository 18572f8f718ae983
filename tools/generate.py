#!/usr/bin/env python
"""Continue a prompt with a trained checkpoint: greedy or sampled (temperature, top-k, top-p), KV-cached.

Prints each prompt followed by its continuation (up to the first EOS) on stdout, and the speed on
stderr. The tokenizer is the one copied into the checkpoint unless --tokenizer names another. Prompts
are prefixed with the end-of-document token by default, since in training every document but the first
follows one; --no-eod-prefix feeds the prompt as it is.

With --chat the tokenizer's chat template is applied: each --prompt is one user turn (after the
--system prompt, if given), rendered with the assistant marker as the generation prompt, and the
reply ends at the template's end marker. --chat-file reads a JSONL of conversations
(`{"messages": [{"role", "content"}, ...]}`, ending with a user turn) and writes each line back
with the assistant's reply appended, as JSONL on stdout.

Examples:
    python tools/generate.py --checkpoint runs/1p36b/checkpoints --prompt '\\begin{abstract}' \\
        --max-new-tokens 200 --temperature 0.8 --top-p 0.95 --seed 0
    python tools/generate.py --checkpoint runs/sft/checkpoints --chat --temperature 0 \\
        --prompt 'What is a manifold?'
    python tools/generate.py --checkpoint runs/sft/checkpoints --chat-file questions.jsonl > answers.jsonl
"""

import argparse
import json
import sys
import time

import torch

from megasci.model.dtypes import DTYPES
from megasci.model.generate import generate
from megasci.tokenizer import load_tokenizer
from megasci.training.checkpoint import checkpoint_tokenizer_path, load_model, resolve_checkpoint


def chat_prompt_ids(tok, messages: list[dict], eod_prefix: bool = True) -> list[int]:
    """The conversation's ids as the SFT data has them, then the assistant marker to answer after."""
    if tok.chat_template is None:
        raise ValueError(
            f"the tokenizer {getattr(tok, 'path', '')} has no chat template; --chat needs one "
            f"(train it with tools/train_tokenizer.py --chat-template megasci-v1)"
        )
    ids, _ = tok.chat_template.bind(tok).encode(messages, add_generation_prompt=True)
    return ([tok.eod_id] if eod_prefix else []) + ids.tolist()


def read_conversations(path: str) -> list[dict]:
    """The records of a JSONL file of conversations; a bad line is an error naming it."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not JSON ({e})") from None
            if not isinstance(record, dict) or "messages" not in record:
                raise ValueError(f"{path}:{number}: expected an object with 'messages'")
            records.append(record)
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint directory, a save directory (its latest), or a HuggingFace model directory",
    )
    p.add_argument("--prompt", action="append", default=[], help="prompt text; repeat for several prompts")
    p.add_argument("--prompt-file", action="append", default=[], help="a file whose whole text is one prompt")
    p.add_argument("--tokenizer", default=None, help="default: the tokenizer saved in the checkpoint")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling; 1 = off")
    p.add_argument("--top-k", type=int, default=None, help="keep only the k most likely tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-eod-prefix", action="store_true", help="do not start the prompt with the EOD token")
    p.add_argument("--chat", action="store_true", help="apply the chat template: each --prompt is a user turn")
    p.add_argument("--system", default=None, help="--chat: a system turn before each prompt")
    p.add_argument("--chat-file", default=None, help="a JSONL of conversations to answer (implies --chat)")
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
        chat = args.chat or args.chat_file is not None
        records = read_conversations(args.chat_file) if args.chat_file else None
        if records is None:
            if not prompts:
                p.error("give --prompt, --prompt-file or --chat-file")
            system = [{"role": "system", "content": args.system}] if args.system else []
            records = [{"messages": system + [{"role": "user", "content": text}]} for text in prompts] if chat else None
        path = resolve_checkpoint(args.checkpoint)
        tokenizer_path = args.tokenizer or checkpoint_tokenizer_path(path)
        if tokenizer_path is None:
            raise FileNotFoundError(f"{path} holds no tokenizer (tokenizer.model or tokenizer.json); pass --tokenizer")
        tok = load_tokenizer(tokenizer_path)
        model, _ = load_model(path, device=args.device, dtype=DTYPES.get(args.dtype))
        model.eval()
        if tok.vocab_size > model.cfg.vocab_size:
            raise ValueError(f"tokenizer has {tok.vocab_size} tokens, the model only {model.cfg.vocab_size}")
        generator = torch.Generator(args.device).manual_seed(args.seed)
        stop_ids = [tok.eos_id]
        if chat:
            stop_ids.insert(0, tok.chat_template.bind(tok).end_id)
        for i, prompt in enumerate(records if chat else prompts):
            prefix = [] if args.no_eod_prefix else [tok.eod_id]
            ids = (
                chat_prompt_ids(tok, prompt["messages"], not args.no_eod_prefix)
                if chat
                else prefix + tok.encode(prompt)
            )
            start = time.perf_counter()
            out = generate(
                model,
                ids,
                args.max_new_tokens,
                temperature=args.temperature,
                top_p=args.top_p,
                top_k=args.top_k,
                eos_id=stop_ids[0],
                generator=generator,
            )[0].tolist()
            seconds = time.perf_counter() - start
            new = out[len(ids) :]
            speed = len(new) / seconds  # the stop token counts: it was generated too
            stops = [new.index(s) for s in stop_ids if s in new]
            if stops:
                new = new[: min(stops)]
            if args.chat_file:
                reply = {"role": "assistant", "content": tok.decode(new)}
                print(json.dumps({**prompt, "messages": prompt["messages"] + [reply]}, ensure_ascii=False))
            elif chat:
                print(("\n" + "-" * 80 + "\n" if i else "") + tok.decode(new))
            else:
                if i:
                    print("\n" + "-" * 80)
                print(tok.decode(out[len(prefix) : len(ids)] + new))
            print(
                f"[{len(ids)} prompt tokens, {len(new)} new in {seconds:.2f} s: {speed:.1f} tokens/s on {args.device}]",
                file=sys.stderr,
            )
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
