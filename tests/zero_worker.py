"""Run under torchrun by tests/test_zero.py: ZeRO-2 training of the tiny model, results to argv[1].

Each step's global batch is split over ranks and micro-batches exactly as the training loop does;
the parent test replays the whole batch in one process with torch.optim.AdamW and compares.
Each gradient mode of ZeroAdamW trains too (MODES), so the tests can hold them against each other.
"""

import sys

import torch
import torch.distributed as dist
import torch.nn as nn

from megasci.distributed import AdamWConfig, ZeroAdamW, init_distributed, shutdown_distributed
from megasci.model import build_model, get_config
from megasci.training.parallelize import apply_fp32_grad_accumulation

STEPS, GLOBAL, MICRO, SEQ = 4, 8, 2, 32
# name -> ZeroAdamW options; "default" is the reference path (bf16 .grad into the fp32 accumulator)
MODES = {"default": {}, "main_grads": {"main_grads": True}, "shard_gradients": {"shard_gradients": True}}
CONFIG = AdamWConfig(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, max_grad_norm=0.5)


def batches(cfg):
    g = torch.Generator().manual_seed(123)
    return torch.randint(0, cfg.vocab_size, (STEPS, GLOBAL, SEQ + 1), generator=g)


def lr_at(step):
    return CONFIG.lr * (1.0 - 0.2 * step)


def main(out_path, bucket_numel):
    env = init_distributed("cpu")
    for dtype in (torch.float32, torch.float64):
        name = str(dtype).split(".")[-1]
        train(env, f"{out_path}.{name}", bucket_numel, dtype)
        if env.world_size > 1:
            for mode in ("main_grads", "shard_gradients"):
                train(env, f"{out_path}.{mode}.{name}", bucket_numel, dtype, mode)
    if env.world_size > 1:
        skipped_layer(env, f"{out_path}.skipped")


def skipped_layer(env, out_path):
    """Rank 1 skips the last layer, so its buckets complete in another order than rank 0's; the
    reductions must still pair up bucket by bucket. Also: ranks that initialise differently start equal."""
    torch.manual_seed(env.rank)  # different initialisations on purpose
    first, last = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    model = nn.ModuleDict({"first": first, "last": last})

    def gathered():
        weights = [torch.zeros_like(first.weight) for _ in range(env.world_size)]
        dist.all_gather(weights, first.weight.detach().contiguous())
        return weights

    before = gathered()
    opt = ZeroAdamW(model, AdamWConfig(), bucket_numel=16)  # bucket 0 = [last.weight], bucket 1 = [first.weight]
    after = gathered()
    x = torch.full((2, 4), float(env.rank + 1))
    out = first(x) if env.rank == 1 else last(first(x))
    own = torch.autograd.grad(out.sum(), first.weight, retain_graph=True)[0].contiguous()
    grads = [torch.zeros_like(own) for _ in range(env.world_size)]
    dist.all_gather(grads, own)
    opt.prepare_backward(last_micro_batch=True)
    out.sum().backward()
    opt.finish_gradient_sync()
    bucket = opt.buckets[1]
    expected = (sum(grads) / env.world_size).reshape(-1)
    padded = torch.zeros(bucket.grad_buffer.numel())
    padded[: expected.numel()] = expected
    torch.save(
        {
            "grad_shard": bucket.grad_shard.clone(),
            "expected": padded[bucket.shard].clone(),
            "differed_before": not torch.equal(before[0], before[1]),
            "rank0_weights_after": all(torch.equal(before[0], w) for w in after),
        },
        f"{out_path}.rank{env.rank}",
    )


def train(env, out_path, bucket_numel, dtype, mode="default"):
    cfg = get_config("tiny")
    torch.manual_seed(0)
    model = build_model(cfg, dtype=dtype)
    apply_fp32_grad_accumulation(model, enabled=mode == "main_grads")
    linear_weights = [m.weight for block in model.layers for m in block.modules() if isinstance(m, nn.Linear)]
    grads_through_autograd = []  # one entry per .grad autograd materialises for a block's matmul weight

    def count_materialised(param):
        if param.grad is not None:
            grads_through_autograd.append(param.shape)

    for weight in linear_weights:  # registered before the optimizer's hooks, which free the .grad
        weight.register_post_accumulate_grad_hook(count_materialised)
    opt = ZeroAdamW(model, CONFIG, bucket_numel=bucket_numel, **MODES[mode])
    data = batches(cfg)
    per_rank = GLOBAL // env.world_size
    accumulation = per_rank // MICRO
    params, norms, losses, grad_shards = [], [], [], []
    for step in range(STEPS):
        mine = data[step, env.rank * per_rank : (env.rank + 1) * per_rank]
        loss_sum = 0.0
        for micro in range(accumulation):
            sample = mine[micro * MICRO : (micro + 1) * MICRO]
            opt.prepare_backward(last_micro_batch=micro == accumulation - 1)
            loss = model(sample[:, :-1], sample[:, 1:]) / accumulation
            loss.backward()
            loss_sum += float(loss.detach())
        norm = opt.finish_gradient_sync()
        grad_shards.append([b.grad_shard.clone() for b in opt.buckets])
        opt.step(lr_at(step), norm)
        norms.append(float(norm))
        losses.append(loss_sum)
        params.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    torch.save(
        {
            "params": params,
            "norms": norms,
            "losses": losses,
            "grad_shards": grad_shards,
            "optimizer": opt.state_dict(),
            "state_bytes": opt.state_bytes(),
            "gradient_bytes": opt.gradient_bytes(),
            "linear_grads_through_autograd": len(grads_through_autograd),
            "largest_bucket_bytes": max(b.padded for b in opt.buckets) * opt.buckets[0].grad_shard.element_size(),
            "buckets": len(opt.buckets),
        },
        f"{out_path}.rank{env.rank}",
    )
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
    shutdown_distributed()  # after main: nothing left alive holds the group when it is destroyed
