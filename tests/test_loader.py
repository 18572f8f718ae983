"""DataLoader: the 2-rank stream is the 1-rank stream split, resume is exact, the thread behaves."""

import gc
import threading
import time

import numpy as np
import pytest
import torch

from megasci.data.gpt_dataset import GPTDataset, GPTDatasetConfig
from megasci.data.indexed_dataset import IndexedDatasetWriter
from megasci.data.loader import DataLoader, DataLoaderConfig

SEQ = 8


class ArangeDataset:
    """Sample g is [1000 g, 1000 g + SEQ], so every token names the sample it came from."""

    def __init__(self, num_samples, delay=0.0, fail_at=None):
        self.num_samples, self.delay, self.fail_at = num_samples, delay, fail_at

    def __len__(self):
        return self.num_samples

    def __getitem__(self, g):
        if g == self.fail_at:
            raise KeyError(f"broken sample {g}")
        if self.delay:
            time.sleep(self.delay)
        return np.arange(1000 * g, 1000 * g + SEQ + 1, dtype=np.int32)


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "megasci-data-prefetch"]


@pytest.fixture(autouse=True)
def no_leaked_threads():
    yield
    gc.collect()
    deadline = time.time() + 2
    while prefetch_threads() and time.time() < deadline:
        time.sleep(0.01)
    assert not prefetch_threads()


def collect(loader, limit=None):
    with loader:
        batches = []
        for batch in loader:
            batches.append(batch)
            if len(batches) == limit:
                break
        return batches


def test_batches_hold_shifted_tokens_and_ids():
    batches = collect(DataLoader(ArangeDataset(20), micro_batch_size=2, global_batch_size=4))
    assert len(batches) == 10
    first = batches[0]
    assert first["tokens"].dtype == torch.int64 and first["tokens"].shape == (2, SEQ)
    assert first["indices"].tolist() == [0, 1]
    torch.testing.assert_close(first["tokens"][1], torch.arange(1000, 1000 + SEQ))
    torch.testing.assert_close(first["labels"][1], torch.arange(1001, 1001 + SEQ))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_two_ranks_split_the_one_rank_stream(prefetch):
    dataset = ArangeDataset(100)
    micro, accumulation = 2, 3
    one_rank = collect(
        DataLoader(dataset, micro_batch_size=micro, global_batch_size=micro * accumulation * 2, prefetch=prefetch)
    )
    ranks = [
        collect(
            DataLoader(
                dataset,
                micro_batch_size=micro,
                global_batch_size=micro * accumulation * 2,
                dp_rank=r,
                dp_size=2,
                prefetch=prefetch,
            )
        )
        for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 8 * accumulation  # 100 // 12 = 8 steps, 4 samples dropped
    interleaved = []
    for step in range(8):
        for rank in ranks:
            interleaved += rank[step * accumulation : (step + 1) * accumulation]
    assert len(interleaved) == len(one_rank)
    for got, want in zip(interleaved, one_rank):
        for name in ("tokens", "labels"):
            torch.testing.assert_close(got[name].reshape(-1, SEQ), want[name].reshape(-1, SEQ))
    assert torch.cat([b["indices"] for b in interleaved]).tolist() == list(range(96))
    rank1_step0 = torch.cat([b["indices"] for b in ranks[1][:accumulation]]).tolist()
    assert rank1_step0 == list(range(6, 12))  # rank 1's contiguous slice of step 0


def test_one_rank_reads_every_sample_in_order():
    dataset = ArangeDataset(40)
    whole = collect(DataLoader(dataset, micro_batch_size=4, global_batch_size=8))
    ids = torch.cat([b["indices"] for b in whole]).tolist()
    assert ids == list(range(40))


def test_resume_at_step_k_continues_the_stream():
    dataset = ArangeDataset(90)
    settings = dict(micro_batch_size=2, global_batch_size=8, dp_rank=1, dp_size=2)  # 2 micro-batches a step
    reference = collect(DataLoader(dataset, **settings))
    k = 4
    loader_a = DataLoader(dataset, **settings)
    seen = collect(loader_a, limit=2 * k)
    state = loader_a.state_dict()
    assert state == {"consumed_samples": k * 8}
    loader_b = DataLoader(dataset, **settings)
    loader_b.load_state_dict(state)
    rest = collect(loader_b)
    assert len(seen) + len(rest) == len(reference)
    for got, want in zip(seen + rest, reference):
        assert got["indices"].tolist() == want["indices"].tolist()
        torch.testing.assert_close(got["tokens"], want["tokens"])
    assert loader_b.state_dict() == {"consumed_samples": 11 * 8}  # 90 // 8 steps
    via_config = collect(DataLoader(dataset, DataLoaderConfig(**settings, consumed_samples=k * 8)))
    assert [b["indices"].tolist() for b in via_config] == [b["indices"].tolist() for b in rest]


def test_consumed_samples_counts_only_completed_steps():
    loader = DataLoader(ArangeDataset(40), micro_batch_size=2, global_batch_size=6)
    with loader:
        stream = iter(loader)
        counts = [(next(stream), loader.consumed_samples)[1] for _ in range(4)]
    assert counts == [0, 0, 6, 6]


def test_iteration_stops_at_the_end_and_drops_the_partial_batch():
    loader = DataLoader(ArangeDataset(23), micro_batch_size=2, global_batch_size=10)
    assert loader.num_steps == 2
    batches = collect(loader)
    assert torch.cat([b["indices"] for b in batches]).tolist() == list(range(20))
    assert collect(DataLoader(ArangeDataset(23), micro_batch_size=2, global_batch_size=10, consumed_samples=20)) == []


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(micro_batch_size=2, global_batch_size=10, dp_size=4), "not divisible by micro_batch_size 2 x dp_size 4"),
        (dict(micro_batch_size=3, global_batch_size=8), "not divisible"),
        (dict(micro_batch_size=0, global_batch_size=8), "must be >= 1"),
        (dict(micro_batch_size=2, global_batch_size=8, dp_rank=2, dp_size=2), "dp_rank"),
        (dict(micro_batch_size=2, global_batch_size=8, consumed_samples=12), "multiple of global_batch_size 8"),
        (dict(micro_batch_size=2, global_batch_size=8, prefetch=-1), "prefetch"),
    ],
)
def test_invalid_geometry_is_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        DataLoader(ArangeDataset(10), **fields)


def test_load_state_dict_validates():
    loader = DataLoader(ArangeDataset(10), micro_batch_size=2, global_batch_size=4)
    with pytest.raises(ValueError, match="multiple"):
        loader.load_state_dict({"consumed_samples": 3})


def test_prefetch_thread_error_reaches_the_consumer():
    loader = DataLoader(ArangeDataset(40, fail_at=5), micro_batch_size=2, global_batch_size=4)
    with loader:
        stream = iter(loader)
        assert [next(stream)["indices"].tolist() for _ in range(2)] == [[0, 1], [2, 3]]
        with pytest.raises(KeyError, match="broken sample 5"):
            next(stream)


def test_wait_time_is_measured_and_close_stops_the_thread():
    loader = DataLoader(ArangeDataset(1000, delay=0.02), micro_batch_size=2, global_batch_size=4, prefetch=2)
    stream = iter(loader)
    for _ in range(3):
        next(stream)
    assert loader.wait_seconds > 0.05  # 3 micro-batches of 2 x 20 ms, consumed faster than produced
    assert len(prefetch_threads()) == 1
    waited = loader.reset_wait_time()
    assert waited > 0.05 and loader.wait_seconds == 0.0
    loader.close()
    assert prefetch_threads() == []
    assert loader.consumed_samples == 4
    assert next(iter(loader))["indices"].tolist() == [4, 5]  # iterating again restarts from consumed_samples
    loader.close()
    assert prefetch_threads() == []


def test_abandoned_loader_stops_its_thread():
    loader = DataLoader(ArangeDataset(1000, delay=0.001), micro_batch_size=2, global_batch_size=4)
    next(iter(loader))
    del loader  # the fixture checks the thread is gone once the loader is collected


def test_device_copy_and_real_gpt_dataset(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=50)
    with IndexedDatasetWriter(tmp_path / "corpus", dtype=np.uint16) as writer:
        writer.add_documents_flat(rng.integers(0, 5000, size=int(lengths.sum())), lengths)
    dataset = GPTDataset(
        GPTDatasetConfig(str(tmp_path / "corpus"), seq_length=16, num_samples=64, split_fractions=(1, 0, 0))
    )
    batches = collect(
        DataLoader(
            dataset, micro_batch_size=4, global_batch_size=16, dp_rank=1, dp_size=2, device="cpu", pin_memory=False
        )
    )
    assert len(batches) == 4 * 2
    for batch in batches:
        for row, g in enumerate(batch["indices"].tolist()):
            sample = torch.from_numpy(dataset[g])
            torch.testing.assert_close(batch["tokens"][row], sample[:-1])
            torch.testing.assert_close(batch["labels"][row], sample[1:])
