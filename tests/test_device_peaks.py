"""device_peak_tflops: the MFU peak of each GPU product, matched on its exact device name."""

import pytest
import torch

from megasci.training.metrics import device_peak_tflops

# Every product's exact device name and its dense bf16 peak from the data sheet, written out here
# independently of the table in metrics.py.
DEVICE_PEAKS = [
    ("NVIDIA H100 80GB HBM3", 989.4),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.5),
    ("NVIDIA H200", 989.4),
    ("NVIDIA H200 NVL", 835.5),
    ("NVIDIA H800", 989.4),
    ("NVIDIA H800 PCIe", 756.0),
    ("NVIDIA H20", 148.0),
    ("NVIDIA A100-SXM4-40GB", 312.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100-PCIE-40GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA L4", 121.0),
    ("NVIDIA L40", 181.05),
    ("NVIDIA L40S", 362.05),
    ("NVIDIA B200", 2250.0),
]


@pytest.mark.parametrize("name,peak", DEVICE_PEAKS)
def test_device_peak_by_exact_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert device_peak_tflops(torch.device("cuda", 0)) == peak


@pytest.mark.parametrize("name", ["NVIDIA GeForce RTX 4090", "NVIDIA L40G", "NVIDIA H100", "Tesla V100-SXM2-16GB", ""])
def test_unknown_device_has_no_peak(monkeypatch, name):
    """A near miss is unknown, not the nearest product: "L40G" is not L40 and a bare "H100" names no variant."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert device_peak_tflops(torch.device("cuda", 0)) is None


def test_l40_is_not_l4_and_cpu_has_no_peak(monkeypatch):
    names = iter(["NVIDIA L40", "NVIDIA L4", "NVIDIA L40S"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: next(names))
    peaks = [device_peak_tflops(torch.device("cuda", 0)) for _ in range(3)]
    assert peaks == [181.05, 121.0, 362.05] and len(set(peaks)) == 3
    assert device_peak_tflops(torch.device("cpu")) is None
