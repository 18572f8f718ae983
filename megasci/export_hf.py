"""Export a checkpoint as a transformers `LlamaForCausalLM` directory, and prove the export right.

    <output>/
      config.json                 LlamaConfig: model_type "llama", exact vocab size, RoPE base, norm eps,
                                  untied embeddings, the training tokenizer's BOS/EOS/PAD ids
      generation_config.json      the same special ids, for `generate`
      model.safetensors           weights under HF names, in the chosen dtype (default: the training dtype)
      tokenizer.model             the training SentencePiece model, byte for byte
      tokenizer.json              the same model for the `tokenizers` library (megasci/export/tokenizer.py)
      tokenizer_config.json       no BOS/EOS added and special-token text not parsed, so
      special_tokens_map.json     `tokenizer(text).input_ids` is exactly the training ids; the chat
                                  template's Jinja (`chat_template`) when the tokenizer has one

An export is only as good as its check, so `export_checkpoint` writes into `<output>.tmp-*`, reloads that
directory with `AutoModelForCausalLM` / `AutoTokenizer` (`verify_export`), and only then renames it to
`<output>`. A failed verification leaves no `<output>`; the rejected files are kept in `<output>.failed`
for inspection (replaced by the next failure) and the error names the file and what differs.

    megasci/export/source.py     the training tokenizer, its identity, the export dtype; ExportError
    megasci/export/tokenizer.py  SentencePiece -> `tokenizers` conversion
    megasci/export/writer.py     writing the model and tokenizer files
    megasci/export/verify.py     the checks (`verify_export`), listed in its docstring
"""

from __future__ import annotations

import os
import shutil

from megasci.export.source import EXPORT_DTYPES, ExportError, export_dtype, tokenizer_identity, training_tokenizer_path
from megasci.export.tokenizer import literal_text_caveats, sentencepiece_to_tokenizers
from megasci.export.verify import Report, verify_export
from megasci.export.writer import make_readable, write_model_files, write_tokenizer_files
from megasci.training.checkpoint import load_model, model_config_from_meta, read_meta, resolve_checkpoint

__all__ = [
    "EXPORT_DTYPES",
    "ExportError",
    "Report",
    "export_checkpoint",
    "literal_text_caveats",
    "sentencepiece_to_tokenizers",
    "verify_export",
    "write_tokenizer_files",
]


def export_checkpoint(
    checkpoint: str,
    output: str,
    dtype: str | None = None,
    tokenizer: str | None = None,
    overwrite: bool = False,
    device: str = "cpu",
) -> Report:
    """Write `output` from `checkpoint` (a checkpoint or save directory), verified, or raise ExportError.

    An existing `output` is replaced only with `overwrite`, and only once the new export has passed.
    """
    checkpoint = resolve_checkpoint(checkpoint)
    output = os.path.abspath(output)
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output}: already exists (pass overwrite to replace it)")
    meta = read_meta(checkpoint)
    torch_dtype = export_dtype(dtype, model_config_from_meta(meta))
    tokenizer = training_tokenizer_path(checkpoint, tokenizer, meta)
    model, _ = load_model(checkpoint, device=device, dtype=torch_dtype)
    tmp = f"{output}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    identity = meta.get("tokenizer") or tokenizer_identity(tokenizer)
    try:
        write_model_files(tmp, model, identity, torch_dtype)
        write_tokenizer_files(tmp, tokenizer, identity)
        make_readable(tmp)
        report = verify_export(tmp, checkpoint, tokenizer=tokenizer, model=model, device=device)
    except BaseException as e:
        failed = output + ".failed"
        shutil.rmtree(failed, ignore_errors=True)
        os.rename(tmp, failed)
        if isinstance(e, ExportError):
            raise ExportError(f"{str(e).replace(tmp, failed)} (rejected export kept in {failed})") from None
        raise
    if os.path.exists(output):
        shutil.rmtree(output)
    os.rename(tmp, output)
    report.export_dir = output
    return report
