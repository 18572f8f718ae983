"""A rank that trains three ZeRO steps (async reduce-scatters and all-gathers), then leaves with
shutdown_distributed: test_shutdown.py runs it under load and expects no abort at exit."""

import torch

from megasci.distributed import AdamWConfig, ZeroAdamW, init_distributed, shutdown_distributed
from megasci.model import build_model, get_config


def main():
    init_distributed("cpu")
    torch.manual_seed(0)
    model = build_model(get_config("tiny"))
    optimizer = ZeroAdamW(model, AdamWConfig(lr=1e-3), bucket_numel=3000)
    tokens = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        optimizer.prepare_backward(True)
        model(tokens[:, :-1], tokens[:, 1:]).backward()
        optimizer.step(1e-3, optimizer.finish_gradient_sync())
    shutdown_distributed()


if __name__ == "__main__":
    main()
