"""Document-masked attention on CPU holds memory linear in the sequence length, not an [S, S] mask.

Peak bytes are those of the tensors ops allocate (tests/memory_watch.py), forward and backward, at a
length and at twice it: linear growth doubles them, a dense [S, S] mask or score matrix quadruples them,
as the reference path (which builds both on purpose) shows, so the measurement can tell the two apart.
"""

from dataclasses import replace

import pytest
import torch

from megasci import ops
from megasci.model import PRESETS, build_model
from memory_watch import LargeTensorWatch

HEADS, HEAD_DIM = 4, 16


def _packed(length, document):
    """Segment ids of `length` tokens in documents of `document` tokens (one document if None)."""
    document = document or length
    return torch.arange(length)[None] // document


def _attention_peak(length, document, backend=None):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, length, HEADS, HEAD_DIM, generator=g, requires_grad=True) for _ in range(3))
    segment_ids = _packed(length, document)
    if backend is None:
        assert ops.resolve_backend("attention", q, k, v, True, None, segment_ids) == "sdpa"  # what CPU runs
    watch = LargeTensorWatch(min_numel=1)
    with watch:
        ops.attention(q, k, v, segment_ids=segment_ids).sum().backward()
    return watch.peak


@pytest.mark.parametrize("document", [256, None], ids=["documents-of-256", "one-document"])
def test_document_masked_attention_memory_grows_linearly(document):
    short, long = _attention_peak(2048, document), _attention_peak(4096, document)
    assert 1.8 < long / short < 2.2, (short, long)


def test_the_measurement_sees_a_dense_mask(attention_backend):
    """The reference path keeps [S, S] scores and mask: four times the bytes at twice the length."""
    attention_backend("reference")
    short, long = _attention_peak(1024, 256, "reference"), _attention_peak(2048, 256, "reference")
    assert long / short > 3.5


def test_a_document_masked_training_step_grows_linearly():
    """The whole tiny model, forward and backward of the loss over packed documents."""
    cfg = replace(PRESETS["tiny"], max_seq_len=4096)
    torch.manual_seed(0)
    model = build_model(cfg, dtype=torch.float32)

    def peak(length):
        tokens = torch.randint(0, cfg.vocab_size, (1, length), generator=torch.Generator().manual_seed(1))
        segment_ids = _packed(length, 512)
        positions = torch.arange(length)[None] % 512
        watch = LargeTensorWatch(min_numel=1)
        with watch:
            model(tokens, tokens, positions=positions, segment_ids=segment_ids).backward()
        model.zero_grad(set_to_none=True)
        return watch.peak

    short, long = peak(2048), peak(4096)
    assert 1.8 < long / short < 2.2, (short, long)
