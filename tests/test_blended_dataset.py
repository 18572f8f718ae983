"""BlendedDataset: weight parsing, samples equal to their source's GPTDataset, shares, epochs, curriculum."""

import numpy as np
import pytest

from megasci.data.blended_dataset import (
    EPOCHS,
    SHARE,
    BlendedDataset,
    CurriculumStage,
    SourceSpec,
    parse_blend,
    parse_curriculum,
)
from megasci.data.gpt_dataset import GPTDataset, GPTDatasetConfig
from megasci.data.indexed_dataset import IndexedDatasetWriter
from megasci.data.sidecar import SidecarWriter

SEQ = 8
PROSE, BODY = {"section": {"abstract", "introduction"}}, {"section": {"body"}}
# Token ranges tell the sources apart inside a sample: prose < 1000 <= body < 2000 <= web < 3000 <= code.
BASE = {"abstract": 0, "introduction": 0, "body": 1000, "web": 2000, "code": 3000}


def write_dataset(prefix, labels, seed):
    rng = np.random.default_rng(seed)
    with IndexedDatasetWriter(prefix, dtype=np.uint16) as writer:
        for label in labels:
            writer.add_document(BASE[label] + rng.integers(0, 1000, size=int(rng.integers(1, 40))))
    sidecar = SidecarWriter(prefix)
    for label in labels:
        sidecar.add({"section": label})
    sidecar.finalize()
    return prefix


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("blend")
    sections = ["abstract", "introduction", "body", "body", "body"] * 12
    return {
        "arxiv": write_dataset(str(root / "arxiv_text_document"), sections, 1),
        "web": write_dataset(str(root / "web_text_document"), ["web"] * 30, 2),
        "code": write_dataset(str(root / "code_text_document"), ["code"] * 20, 3),
    }


def single_stage(blend, end=None, **kwargs):
    return BlendedDataset([CurriculumStage("all", parse_blend(blend), end_samples=end)], SEQ, **kwargs)


def test_parse_blend_forms():
    specs = parse_blend(["0.7", "data/a_text_document", "0.3", "data/b_text_document"])
    assert [(s.name, s.weight, s.weight_kind) for s in specs] == [
        ("a_text_document", 0.7, SHARE),
        ("b_text_document", 0.3, SHARE),
    ]
    specs = parse_blend("2.0x data/arxiv 1x data/web")
    assert [(s.prefix, s.weight, s.weight_kind) for s in specs] == [
        ("data/arxiv", 2.0, EPOCHS),
        ("data/web", 1.0, EPOCHS),
    ]
    specs = parse_blend(
        [
            {"prefix": "data/arxiv", "weight": "1.5x", "filter": {"section": ["abstract"]}},
            {"path": "data/web", "weight": "0.5x", "name": "web"},
        ]
    )
    assert specs[0].document_filter == {"section": {"abstract"}} and specs[0].name == "arxiv[section=abstract]"
    assert specs[1].name == "web" and specs[1].weight_text == "0.5x"


@pytest.mark.parametrize(
    "blend, message",
    [
        (["0.7", "a", "2.0x", "b"], "mixes shares and epoch multipliers"),
        (["0.7", "a", "0.3"], "pairs"),
        (["seven", "a"], "bad blend weight"),
        (["-1", "a"], "non-negative"),
        ([], "at least one source"),
    ],
)
def test_bad_blends_are_value_errors(blend, message):
    with pytest.raises(ValueError, match=message):
        parse_blend(blend)


def test_every_sample_equals_its_sources_gpt_dataset_sample(data):
    ds = single_stage(["0.5", data["arxiv"], "0.3", data["web"], "0.2", data["code"]], end=300, seed=7)
    assert len(ds) == 300 and ds.samples_per_source.sum() == 300
    reference = {
        s.name: GPTDataset(GPTDatasetConfig(prefix=s.prefix, seq_length=SEQ, seed=7, num_samples=int(n)))
        for s, n in zip(ds.sources, ds.samples_per_source)
    }
    for i in range(len(ds)):
        name, n = ds.source_of(i)
        sample = ds[i]
        assert sample.dtype == np.int64 and len(sample) == SEQ + 1
        np.testing.assert_array_equal(sample, reference[name][n], err_msg=f"sample {i}")
    with pytest.raises(IndexError):
        ds[300]


def test_shares_stay_within_one_sample_at_every_prefix(data):
    weights = [0.5, 0.3, 0.2]
    ds = single_stage(
        [str(weights[0]), data["arxiv"], str(weights[1]), data["web"], str(weights[2]), data["code"]], end=1000
    )
    counts = np.cumsum(ds.source_index[:, None] == np.arange(3), axis=0)
    deviation = counts - np.array(weights) * np.arange(1, 1001)[:, None]
    assert np.abs(deviation).max() <= 1


def test_epoch_multipliers_give_samples_proportional_to_epochs(data):
    ds = single_stage(["2.0x", data["arxiv"], "1.0x", data["web"]])
    epoch_arxiv, epoch_web = ds.samples_per_epoch
    assert epoch_arxiv > 0 and epoch_web > 0
    assert len(ds) == 2 * epoch_arxiv + epoch_web  # no end given: the sum of the epochs asked for
    realised = ds.samples_per_source
    assert abs(realised[0] - 2 * epoch_arxiv) <= 1 and abs(realised[1] - epoch_web) <= 1


def test_share_stage_without_end_is_an_error(data):
    with pytest.raises(ValueError, match="needs end_samples or end_tokens"):
        single_stage(["1", data["web"]])


def curriculum(data, **kwargs):
    return BlendedDataset(
        parse_curriculum(
            [
                {
                    "name": "prose",
                    "end_tokens": 40 * SEQ + 3,
                    "blend": [{"prefix": data["arxiv"], "weight": 1, "name": "prose", "filter": PROSE}],
                },
                {
                    "name": "bodies",
                    "end_samples": 100,
                    "blend": [{"prefix": data["arxiv"], "weight": 1, "name": "bodies", "filter": BODY}],
                },
                {
                    "name": "mixed",
                    "end_samples": 160,
                    "blend": [
                        {"prefix": data["arxiv"], "weight": 0.5, "name": "prose", "filter": PROSE},
                        {"prefix": data["arxiv"], "weight": 0.3, "name": "bodies", "filter": BODY},
                        {"prefix": data["web"], "weight": 0.2},
                    ],
                },
            ]
        ),
        SEQ,
        **kwargs,
    )


def test_curriculum_switches_exactly_at_each_end_and_filters_by_label(data):
    ds = curriculum(data, seed=3)
    assert list(ds.stage_ends) == [41, 100, 160]  # ceil((40 * 8 + 3) / 8) = 41
    stages = [ds.stage_of(i) for i in range(len(ds))]
    assert stages == [0] * 41 + [1] * 59 + [2] * 60
    assert {ds.source_of(i)[0] for i in range(41)} == {"prose"}
    assert {ds.source_of(i)[0] for i in range(41, 100)} == {"bodies"}
    assert {ds.source_of(i)[0] for i in range(100, 160)} == {"prose", "bodies", "web_text_document"}
    for i in range(len(ds)):  # the token ranges prove which documents each sample came from
        tokens = ds[i]
        low, high = {"prose": (0, 1000), "bodies": (1000, 2000), "web_text_document": (2000, 3000)}[ds.source_of(i)[0]]
        assert tokens.min() >= low and tokens.max() < high, (i, ds.source_of(i))
    first_mixed_prose = next(i for i in range(100, 160) if ds.source_of(i)[0] == "prose")
    assert ds.source_of(first_mixed_prose)[1] == 41  # prose continues where stage 1 stopped
    assert len(ds.datasets[0]) == 41 + int(np.sum(ds.source_index[100:] == 0))


def test_rebuilt_dataset_yields_identical_samples(data, tmp_path):
    first = curriculum(data, seed=5)
    again = curriculum(data, seed=5)  # loads the cached GPTDataset indices
    fresh = curriculum(data, seed=5, cache_dir=str(tmp_path / "fresh"))  # builds them anew
    assert not any(d.built for d in again.datasets) and all(d.built for d in fresh.datasets)
    for i in [159, 0, 77, 41, 100, 40, 99]:  # any order: each sample is a pure function of i
        np.testing.assert_array_equal(first[i], again[i])
        np.testing.assert_array_equal(first[i], fresh[i])
    other_seed = curriculum(data, seed=6)
    assert any(not np.array_equal(first[i], other_seed[i]) for i in range(len(first)))


def test_describe_reports_names_and_realised_shares(data):
    ds = single_stage(["2x", data["arxiv"], "1x", data["web"]])
    text = ds.describe()
    for j, source in enumerate(ds.sources):
        assert source.name in text
        assert f"{ds.samples_per_source[j] / len(ds):.4f}" in text
        assert f"{ds.samples_per_source[j] / ds.samples_per_epoch[j]:.3f}" in text
    assert "2x" in text and "1x" in text and f"{len(ds)} samples" in text
    curriculum_text = curriculum(data).describe()
    assert all(name in curriculum_text for name in ("prose", "bodies", "mixed", "web_text_document"))


def test_two_sources_with_one_name_are_an_error(data):
    stage = CurriculumStage(
        "s", [SourceSpec(data["arxiv"], 1, name="x"), SourceSpec(data["web"], 1, name="x")], end_samples=10
    )
    with pytest.raises(ValueError, match="both named 'x'"):
        BlendedDataset([stage], SEQ)
