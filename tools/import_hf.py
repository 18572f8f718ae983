#!/usr/bin/env python
"""Import a HuggingFace Llama-family model directory as a megasci checkpoint (weights, model config, tokenizer).

    python tools/import_hf.py --hf-model downloads/TinyLlama-1.1B --output runs/tinyllama/init

reads config.json, model.safetensors (or the shards model.safetensors.index.json lists) and the tokenizer
(tokenizer.model, else tokenizer.json with its tokenizer_config.json), and writes <output>/step_00000000
through the checkpoint module's own writer, so it carries checksums, the tokenizer's identity and a copy of
the tokenizer like any checkpoint. A config we cannot reproduce exactly (biases, sliding windows, QK-norm,
MoE, another model_type or activation) or a missing shard is refused, naming the file and the key, before
anything is written. Nothing is downloaded.
"""

import argparse
import os
import sys

from megasci.model.hf_import import HFImportError, tokenizer_file
from megasci.tokenizer import load_tokenizer
from megasci.training.checkpoint import complete_checkpoints, load_hf_model, save_checkpoint


def import_hf(hf_dir: str, output: str) -> str:
    """Write the step-0 checkpoint of the model in `hf_dir` under the save directory `output`; returns its path.

    Everything that can be refused is checked first (config, tokenizer against the vocabulary, the shards
    and every tensor's name and shape), so a refusal leaves `output` untouched.
    """
    if complete_checkpoints(output):
        raise FileExistsError(f"{output}: already holds checkpoints; import into a new directory")
    model, meta = load_hf_model(hf_dir)  # the loading path train.init_from and the tools take too
    meta = {k: v for k, v in meta.items() if k != "step"}  # save_checkpoint writes the step
    os.makedirs(output, exist_ok=True)
    return save_checkpoint(
        output,
        0,
        rank=0,
        rank_state={},
        model_state=model.state_dict(),
        meta=meta,
        tokenizer=load_tokenizer(tokenizer_file(hf_dir)),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--hf-model", required=True, help="a HuggingFace model directory (config.json, safetensors, tokenizer)"
    )
    p.add_argument(
        "--output", required=True, help="the save directory to write step_00000000 into (must hold no checkpoint)"
    )
    args = p.parse_args(argv)
    try:
        path = import_hf(args.hf_model, args.output)
    except (HFImportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"imported {args.hf_model} as {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
