"""Our SentencePiece unigram model as a HuggingFace `tokenizers` model that gives the same ids and text."""

from __future__ import annotations

import re

from megasci.export.source import ExportError


def _load_proto(model_path: str):
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    with open(model_path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def _unmatchable_cuts(proto) -> tuple[dict[str, list[str]], list[str]]:
    """Where to cut each piece SentencePiece never matches in text (control, byte, unused pieces).

    A cut between two characters that no matchable piece covers together changes nothing for
    SentencePiece. Returns {text before the cut: [texts after it]} and the pieces with no such place:
    they are cut after their first character anyway, and their literal text may tokenize differently.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    kind = pb.ModelProto.SentencePiece
    matchable = [p.piece for p in proto.pieces if p.type in (kind.NORMAL, kind.USER_DEFINED)]
    spanned = {m[i : i + 2] for m in matchable for i in range(len(m) - 1)}
    cuts: dict[str, list[str]] = {}
    inexact = []
    for p in proto.pieces:
        if p.type in (kind.NORMAL, kind.USER_DEFINED):
            continue
        k = next((k for k in range(1, len(p.piece)) if p.piece[k - 1 : k + 1] not in spanned), None)
        if k is None:
            inexact.append(p.piece)
            k = 1
        if len(p.piece) > 1:
            cuts.setdefault(p.piece[:k], []).append(p.piece[k:])
    return cuts, inexact


def literal_text_caveats(model_path: str) -> list[str]:
    """Strings (like "<s>") whose literal occurrence in text the exported tokenizer may split differently."""
    return _unmatchable_cuts(_load_proto(model_path))[1]


def sentencepiece_to_tokenizers(model_path: str):
    """Our SentencePiece unigram model as a `tokenizers.Tokenizer` that gives the same ids and text.

    SentencePiece matches only normal and user-defined pieces, and gives a user-defined piece the score
    `length * max_score - 0.1` so it always wins; we copy those scores into the Unigram model, so runs
    like "\\n\\n\\n" split as SentencePiece splits them. Control and byte pieces (`<s>`, `<0x41>`) must never
    match literal text, but `tokenizers` matches every vocabulary entry; a Split pre-tokenizer cuts each such
    string where no matchable piece spans, which changes nothing else (see `literal_text_caveats`). The
    special tokens are not added tokens here, which `tokenizers` would cut out of text ("</s>" -> EOS) where
    SentencePiece never does; transformers registers them from tokenizer_config.json with
    `split_special_tokens`. The normalizer only escapes spaces (our models use the identity rule, no dummy
    prefix, no whitespace collapsing).
    """
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    kind = pb.ModelProto.SentencePiece
    proto = _load_proto(model_path)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type != pb.TrainerSpec.UNIGRAM:
        raise ExportError(
            f"{model_path}: only unigram SentencePiece models can be exported, not "
            f"{pb.TrainerSpec.ModelType.Name(spec.model_type)}"
        )
    unsupported = {
        "normalization rule": norm.name not in ("identity", ""),
        "dummy prefix": norm.add_dummy_prefix,
        "whitespace collapsing": norm.remove_extra_whitespaces,
        "whitespace as suffix": spec.treat_whitespace_as_suffix,
    }
    if any(unsupported.values()):
        raise ExportError(
            f"{model_path}: cannot reproduce {', '.join(k for k, v in unsupported.items() if v)} in tokenizer.json"
        )
    normal_scores = [p.score for p in proto.pieces if p.type == kind.NORMAL]
    max_score = max(normal_scores)
    vocab = [
        (p.piece, len(p.piece) * max_score - 0.1 if p.type == kind.USER_DEFINED else p.score) for p in proto.pieces
    ]
    if min(s for _, s in vocab) < min(normal_scores):  # tokenizers derives its unknown penalty from the minimum
        raise ExportError(
            f"{model_path}: a piece scores below every normal piece; tokenizers would penalise "
            f"unknown characters differently from SentencePiece"
        )
    tok = Tokenizer(models.Unigram(vocab, unk_id=spec.unk_id, byte_fallback=spec.byte_fallback))
    tok.normalizer = normalizers.Replace(" ", "▁")
    cuts, _ = _unmatchable_cuts(proto)
    if cuts:
        pattern = "|".join(
            re.escape(head) + "(?=" + "|".join(re.escape(t) for t in tails) + ")" for head, tails in cuts.items()
        )
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok
