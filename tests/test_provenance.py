"""data/provenance.py: a dataset prefix to the report preprocessing wrote for it, by the writer's naming
rule, checked on real preprocessing output and on names where prefix and key both hold underscores."""

import json
import os
import shutil

import pytest

from megasci.corpus.synthetic import generate_papers
from megasci.data.preprocess import PreprocessConfig, preprocess
from megasci.data.provenance import (
    common_tokenizer,
    output_prefix_for,
    preprocess_report,
    record_tokenizer,
    recorded_tokenizer,
    report_path_for,
    tokenizer_record_path,
    tokenizer_warnings,
)
from megasci.tokenizer import SentencePieceTrainConfig, load_tokenizer, train_sentencepiece


def write_report(output_prefix, outputs):
    with open(report_path_for(output_prefix), "w") as f:
        json.dump({"config": {}, "summary": {"outputs": outputs}}, f)
    return report_path_for(output_prefix)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    """Real preprocessing output with a JSON key that holds an underscore."""
    root = tmp_path_factory.mktemp("prov")
    texts = [record["text"] for record in generate_papers(30, seed=3)]
    model = str(root / "tok.model")
    train_sentencepiece(texts, model, SentencePieceTrainConfig(vocab_size=512, num_threads=1, mined_commands=20))
    jsonl = root / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t[:500], "full_text": t}) + "\n" for t in texts))
    out = str(root / "my_corpus")
    preprocess(
        PreprocessConfig(
            inputs=[str(jsonl)], output_prefix=out, tokenizer_model=model, json_keys=("text", "full_text"), workers=0
        ),
        progress=False,
        log=lambda *a: None,
    )
    return {"out": out, "tokenizer": load_tokenizer(model)}


def test_real_preprocessing_outputs_record_their_tokenizer_and_find_their_report(preprocessed):
    out = preprocessed["out"]
    identity = preprocessed["tokenizer"].identity()
    for key in ("text", "full_text"):
        prefix = output_prefix_for(out, key)
        assert preprocess_report(prefix) == report_path_for(out) == f"{out}_preprocess.json"
        assert recorded_tokenizer(prefix) == json.loads(json.dumps(identity))
    assert tokenizer_warnings(output_prefix_for(out, "full_text"), identity) == []
    [warning] = tokenizer_warnings(output_prefix_for(out, "text"), {**identity, "sha256": "0" * 64})
    assert tokenizer_record_path(output_prefix_for(out, "text")) in warning and "sha256" in warning


def test_without_a_record_the_report_is_the_witness(preprocessed, tmp_path):
    """A dataset written before `.tokenizer.json` existed: its preprocessing report still tells."""
    out = str(tmp_path / "old")
    prefix = output_prefix_for(out, "text")
    for suffix in (".bin", ".idx"):
        shutil.copyfile(output_prefix_for(preprocessed["out"], "text") + suffix, prefix + suffix)
    identity = preprocessed["tokenizer"].identity()
    assert tokenizer_warnings(prefix, {**identity, "sha256": "0" * 64}) == []  # nothing recorded
    with open(report_path_for(out), "w") as f:
        json.dump({"config": {}, "summary": {"outputs": {"text": prefix}}, "tokenizer": identity}, f)
    [warning] = tokenizer_warnings(prefix, {**identity, "sha256": "0" * 64})
    assert report_path_for(out) in warning and "sha256" in warning


def test_merging_keeps_the_tokenizer_only_when_every_input_agrees(preprocessed, tmp_path):
    a, b = (output_prefix_for(preprocessed["out"], key) for key in ("text", "full_text"))
    identity = recorded_tokenizer(a)
    assert common_tokenizer([a, b]) == identity
    other = str(tmp_path / "other_text_document")
    for suffix in (".bin", ".idx"):
        shutil.copyfile(a + suffix, other + suffix)
    assert common_tokenizer([a, other]) is None  # one input records nothing: the merge records nothing
    record_tokenizer(other, {**identity, "sha256": "1" * 64})
    with pytest.raises(ValueError, match="record different tokenizers"):
        common_tokenizer([a, other])


def test_the_report_must_name_the_prefix_under_the_key_its_name_spells(tmp_path):
    """`a_b_c_document` is out `a_b` + key `c`, or out `a` + key `b_c`: only a report that lists the
    prefix under that very key describes it, and the longest out comes first."""
    prefix = str(tmp_path / "a_b_c_document")
    assert preprocess_report(prefix) is None
    write_report(str(tmp_path / "a_b"), {"other": prefix})  # lists it under a key its name does not spell
    assert preprocess_report(prefix) is None
    short = write_report(str(tmp_path / "a"), {"b_c": prefix})
    assert preprocess_report(prefix) == short
    long = write_report(str(tmp_path / "a_b"), {"c": os.path.relpath(prefix)})  # relative, as given on the CLI
    assert preprocess_report(prefix) == long
    assert preprocess_report(str(tmp_path / "a_b_c")) is None  # not a preprocessing output name
