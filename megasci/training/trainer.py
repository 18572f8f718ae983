"""The pretraining loop, by hand: data, ZeRO-2 AdamW, schedule, guards, validation, checkpoints, logs.

One optimizer step: `accumulation` micro-batches of forward and backward (the ZeRO hooks
accumulate fp32 gradients and, during the last backward, reduce-scatter each finished bucket);
then the global gradient norm, the loss-spike / NaN guard, and the sharded AdamW step that
all-gathers the updated parameters. Parameters live in the model dtype (bf16 for the reference
preset) with fp32 masters in the optimizer: Megatron-style mixed precision, no autocast.

Resuming is exact: the whole data state is `consumed_samples`, and the checkpoint holds the model,
every rank's optimizer shard, the spike guard's running mean and the RNG states, so N steps, a
kill, a resume and N more steps give the same losses and parameters as 2N steps in one go.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import signal
import time

import numpy as np
import torch
import torch.distributed as dist

from megasci.data.blended_dataset import BlendedDataset, CurriculumStage, parse_blend, parse_curriculum
from megasci.data.gpt_dataset import GPTDataset, GPTDatasetConfig
from megasci.data.loader import DataLoader, DataLoaderConfig
from megasci.distributed import AdamWConfig, ZeroAdamW, barrier, default_decay, init_distributed, print_rank0
from megasci.evaluation import evaluate, tokenizer_warnings
from megasci.model import build_model, flops_per_token
from megasci.tokenizer import load_tokenizer
from megasci.utils.io import atomic_text_output

from .checkpoint import latest_checkpoint, load_rank_state, read_meta, save_checkpoint, MODEL_NAME
from .config import TrainConfig
from .metrics import MetricsLog, device_peak_tflops
from .parallelize import apply_activation_checkpointing, apply_compile
from .schedule import learning_rate


class TrainingDiverged(RuntimeError):
    """Raised after `max_skipped_steps` skipped steps in a row."""


class SpikeGuard:
    """Skips steps whose loss or gradient norm is not finite, or whose loss jumps above
    `factor` x the running mean (an EMA of accepted losses, once `warmup` steps are in)."""

    def __init__(self, factor: float, warmup: int, max_skipped: int, decay: float = 0.95):
        self.factor, self.warmup, self.max_skipped, self.decay = factor, warmup, max_skipped, decay
        self.mean: float | None = None
        self.accepted = 0
        self.consecutive = 0
        self.total_skipped = 0

    def check(self, step: int, loss: float, grad_norm: float) -> str | None:
        """None to take the step; otherwise the reason it is skipped."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            reason = f"non-finite loss {loss} or gradient norm {grad_norm}"
        elif self.factor and self.mean is not None and self.accepted >= self.warmup and loss > self.factor * self.mean:
            reason = f"loss {loss:.4f} is above {self.factor:g} x the running mean {self.mean:.4f}"
        else:
            self.mean = loss if self.mean is None else self.decay * self.mean + (1 - self.decay) * loss
            self.accepted += 1
            self.consecutive = 0
            return None
        self.consecutive += 1
        self.total_skipped += 1
        if self.consecutive > self.max_skipped:
            raise TrainingDiverged(
                f"step {step}: {self.consecutive} steps in a row skipped (last: {reason}); stopping. "
                f"Resume from the latest checkpoint with a lower learning rate or longer warm-up.")
        return reason

    def state_dict(self) -> dict:
        return {"mean": self.mean, "accepted": self.accepted, "consecutive": self.consecutive,
                "total_skipped": self.total_skipped}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.accepted = state["mean"], state["accepted"]
        self.consecutive, self.total_skipped = state["consecutive"], state["total_skipped"]


def build_train_dataset(cfg: TrainConfig, cache_dir: str) -> BlendedDataset:
    """The training stream: the curriculum's stages, or one stage of the blend covering every step."""
    needed = cfg.train.train_steps * cfg.train.global_batch_size
    if cfg.data.curriculum:
        stages = parse_curriculum(cfg.data.curriculum)
        last = stages[-1]
        if last.end_samples is None and last.end_tokens is None:  # the last stage runs to the end of training,
            stages[-1] = dataclasses.replace(last, end_samples=needed)  # epoch multipliers then give its shares
    elif cfg.data.blend:
        stages = [CurriculumStage("main", parse_blend(cfg.data.blend), end_samples=needed)]
    else:
        raise ValueError("the config needs data.blend or data.curriculum")
    dataset = BlendedDataset(stages, cfg.data.seq_length, seed=cfg.data.seed, split="train", cache_dir=cache_dir,
                             split_fractions=cfg.data.split)
    if len(dataset) < needed:
        raise ValueError(f"the curriculum covers {len(dataset):,} samples but {cfg.train.train_steps:,} steps of "
                         f"{cfg.train.global_batch_size} need {needed:,}; extend the last stage")
    return dataset


def build_eval_datasets(cfg: TrainConfig, train: BlendedDataset, cache_dir: str) -> dict[str, GPTDataset]:
    """Each source's first `eval_samples` validation samples (fewer if its validation split is small)."""
    datasets = {}
    for source in train.sources:
        config = GPTDatasetConfig(prefix=source.prefix, document_filter=source.document_filter, split="valid",
                                  split_fractions=cfg.data.split, seq_length=cfg.data.seq_length,
                                  seed=cfg.data.seed, cache_dir=cache_dir)
        available = (BlendedDataset._split_tokens(config) - 1) // cfg.data.seq_length  # one pass, label included
        if available == 0:
            print_rank0(f"validation: source {source.name} has no full sample in its validation split; not evaluated")
            continue
        datasets[source.name] = GPTDataset(dataclasses.replace(config, num_samples=min(cfg.data.eval_samples, available)))
    return datasets


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class _StopRequest:
    """SIGTERM (what torchrun and schedulers send) asks for a checkpoint and a clean exit."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def agreed(self, device, dp_size: int) -> bool:
        """Whether any rank was asked to stop, agreed across ranks so they stop at the same step."""
        if dp_size == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _sync(device, enabled: bool) -> None:
    if enabled and device.type == "cuda":
        torch.cuda.synchronize(device)


def pretrain(cfg: TrainConfig) -> dict:
    """Trains per `cfg`, resuming from the newest checkpoint in `train.save_dir` if there is one."""
    t = cfg.train
    env = init_distributed(None if t.device == "auto" else t.device)
    rank0 = env.rank == 0
    model_cfg = cfg.model.build()
    if not cfg.data.tokenizer:
        raise ValueError("data.tokenizer is required: the checkpoint records which tokenizer the model was trained with")
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if model_cfg.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"model vocab_size {model_cfg.vocab_size} is smaller than the tokenizer's "
                         f"{tokenizer.vocab_size} ({cfg.data.tokenizer})")
    if cfg.data.seq_length > model_cfg.max_seq_len:
        raise ValueError(f"data.seq_length {cfg.data.seq_length} exceeds the model's max_seq_len {model_cfg.max_seq_len}")
    accumulation = DataLoaderConfig(t.micro_batch_size, t.global_batch_size, dp_size=env.world_size).accumulation_steps
    save_dir = t.save_dir
    cache_dir = cfg.data.cache_dir or os.path.join(save_dir, "index_cache")
    tb_dir = t.tensorboard_dir or os.path.join(save_dir, "tensorboard")
    if rank0:
        os.makedirs(save_dir, exist_ok=True)
        with atomic_text_output(os.path.join(save_dir, "config.yaml")) as f:
            f.write(cfg.to_yaml())
    print_rank0(f"config:\n{cfg.to_yaml()}")
    print_rank0(f"{env.world_size} data-parallel rank(s) on {env.device}, backend {env.backend}; global batch "
                f"{t.global_batch_size} = micro {t.micro_batch_size} x accumulation {accumulation} x dp {env.world_size}")

    train_data = build_train_dataset(cfg, cache_dir)
    mismatched = [w for source in train_data.sources for w in tokenizer_warnings(source.prefix, tokenizer.identity())]
    if mismatched:  # a model trained on ids from another tokenizer loads and runs, and means nothing
        raise ValueError(f"data.tokenizer {cfg.data.tokenizer} is not the tokenizer the data was written with:\n"
                         + "\n".join(mismatched))
    print_rank0("data:\n" + train_data.describe())
    eval_data = build_eval_datasets(cfg, train_data, cache_dir)

    torch.manual_seed(t.seed)
    model = apply_activation_checkpointing(build_model(model_cfg, device=env.device), model_cfg.checkpointing)
    decay = default_decay if not cfg.optim.decay_embeddings else (lambda name, p: p.dim() >= 2)
    o = cfg.optim
    optimizer = ZeroAdamW(model, AdamWConfig(lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay,
                                             max_grad_norm=o.clip_grad), bucket_numel=o.bucket_numel, decay=decay)
    if t.compile:  # after the optimizer has re-pointed the parameters into its buffers; compiles on first use
        apply_compile(model, t.compile)
        print_rank0(f"blocks compiled with torch.compile(backend={t.compile!r})")
    guard = SpikeGuard(t.spike_factor, t.spike_warmup_steps, t.max_skipped_steps)
    step, consumed = 0, 0
    resume_from = latest_checkpoint(save_dir)
    if env.world_size > 1:  # one answer for every rank, even where a shared filesystem's caches disagree
        chosen = [resume_from]
        dist.broadcast_object_list(chosen, src=0)
        resume_from = chosen[0]
    if resume_from is not None:
        meta = read_meta(resume_from)
        model.load_state_dict(torch.load(os.path.join(resume_from, MODEL_NAME), map_location=env.device, weights_only=True))
        own = load_rank_state(resume_from, env.rank) if meta["dp_size"] == env.world_size else None
        optimizer.load_state_dict(lambda r: own["optimizer"] if own is not None and r == env.rank
                                  else load_rank_state(resume_from, r)["optimizer"], meta["dp_size"])
        guard.load_state_dict(meta["spike_guard"])
        step, consumed = meta["step"], meta["consumed_samples"]
        if own is not None:  # same ranks: each gets its own RNG streams back
            _set_rng_state(own["rng"])
        if meta["tokenizer"].get("sha256") != tokenizer.identity().get("sha256"):
            print_rank0(f"warning: {cfg.data.tokenizer} differs from the tokenizer the checkpoint was trained with")
        print_rank0(f"resumed from {resume_from}: step {step}, {consumed:,} samples consumed "
                    f"(saved with {meta['dp_size']} rank(s), now {env.world_size})")
    if consumed % t.global_batch_size:
        raise ValueError(f"the checkpoint consumed {consumed} samples, not a multiple of global_batch_size "
                         f"{t.global_batch_size}; resume with the batch size it was trained with")

    seq = cfg.data.seq_length
    flops_token = flops_per_token(model_cfg, seq)
    peak = t.peak_tflops or device_peak_tflops(env.device)
    decay_steps = o.decay_steps if o.decay_steps is not None else max(0, t.train_steps - o.warmup_steps)
    log = MetricsLog(tb_dir, active=rank0)
    log.text("config", cfg.to_yaml())
    log.text("data", train_data.describe())
    loader = DataLoader(train_data, DataLoaderConfig(
        micro_batch_size=t.micro_batch_size, global_batch_size=t.global_batch_size, dp_rank=env.rank,
        dp_size=env.world_size, consumed_samples=consumed, prefetch=cfg.data.prefetch, device=env.device))
    names = [s.name for s in train_data.sources]

    def run_validation(at_step: int) -> dict[str, float]:
        model.eval()
        losses = evaluate(model, eval_data, t.micro_batch_size, env.device, env.rank, env.world_size)
        model.train()
        values = {}
        for name, loss in losses.items():
            values[f"val/loss/{name}"] = loss
            values[f"val/ppl/{name}"] = math.exp(min(loss, 50.0))
        log.scalars(at_step, values)
        if losses:
            per_source = ", ".join(f"{n} {math.exp(min(v, 50.0)):.2f}" for n, v in losses.items() if n != "all")
            print_rank0(f"validation at step {at_step}: loss {losses['all']:.4f}, perplexity "
                        f"{math.exp(min(losses['all'], 50.0)):.2f} ({per_source})")
        return losses

    def save(at_step: int) -> str:
        optimizer.wait_for_parameters()
        meta = {"consumed_samples": loader.consumed_samples, "dp_size": env.world_size,
                "model_config": dataclasses.asdict(model_cfg), "tokenizer": tokenizer.identity(),
                "train_config": cfg.to_dict(), "spike_guard": guard.state_dict(),
                "stage": train_data.stages[train_data.stage_of(max(0, loader.consumed_samples - 1))].name}
        model_state = {k: v.detach().cpu() for k, v in model.state_dict().items()} if rank0 else None
        path = save_checkpoint(save_dir, at_step, rank=env.rank,
                               rank_state={"optimizer": optimizer.state_dict(), "rng": _rng_state()},
                               model_state=model_state, meta=meta, config_yaml=cfg.to_yaml(),
                               tokenizer_path=getattr(tokenizer, "path", None), keep_last=t.keep_last,
                               barrier=barrier)
        print_rank0(f"saved {path}")
        return path

    summary = {"start_step": step, "losses": {}, "validation": {}, "skipped": []}
    if step == 0 and eval_data:
        summary["validation"][0] = run_validation(0)
    interval = {"steps": 0, "time": 0.0, "wait": 0.0, "fb": 0.0, "opt": 0.0, "loss": 0.0}
    last_checkpoint = resume_from
    if env.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(env.device)
    model.train()
    try:
        with _StopRequest() as stop:
            batches = iter(loader)
            while step < t.train_steps:
                lr = learning_rate(step, o.lr, o.min_lr, o.warmup_steps, decay_steps)
                started = time.perf_counter()
                waited = loader.wait_seconds
                loss_sum = torch.zeros((), dtype=torch.float32, device=env.device)
                for micro in range(accumulation):
                    batch = next(batches)
                    optimizer.prepare_backward(last_micro_batch=micro == accumulation - 1)
                    loss = model(batch["tokens"], batch["labels"])
                    (loss / accumulation).backward()
                    loss_sum += loss.detach().float()
                _sync(env.device, t.timing_sync)
                backward_done = time.perf_counter()
                grad_norm = optimizer.finish_gradient_sync()
                if env.world_size > 1:
                    dist.all_reduce(loss_sum)
                loss_value = float(loss_sum) / (accumulation * env.world_size)
                norm_value = float(grad_norm)
                reason = guard.check(step, loss_value, norm_value)
                if reason is None:
                    optimizer.step(lr, grad_norm)
                else:
                    optimizer.skip_step()
                    summary["skipped"].append(step)
                    print_rank0(f"step {step + 1}: skipped, {reason}")
                _sync(env.device, t.timing_sync)
                finished = time.perf_counter()
                step += 1
                summary["losses"][step] = loss_value
                data_wait = loader.wait_seconds - waited
                for key, value in (("time", finished - started), ("wait", data_wait),
                                   ("fb", backward_done - started - data_wait), ("opt", finished - backward_done),
                                   ("loss", loss_value)):
                    interval[key] += value
                interval["steps"] += 1
                consumed = loader.consumed_samples
                log.scalars(step, {"train/loss": loss_value, "train/lr": lr, "train/grad_norm": norm_value,
                                   "train/skipped_steps": guard.total_skipped})

                if (t.log_interval and step % t.log_interval == 0) or step == t.train_steps:
                    n = interval["steps"]
                    tokens_per_s = n * t.global_batch_size * seq / interval["time"]
                    tflops = tokens_per_s * flops_token / env.world_size / 1e12
                    stage = train_data.stage_of(consumed - 1)
                    per_source = (np.bincount(train_data.source_index[:consumed], minlength=len(names)) if rank0
                                  else np.zeros(len(names), dtype=np.int64))  # only rank 0 logs
                    values = {"perf/tokens_per_s": tokens_per_s, "perf/tflops_per_device": tflops,
                              "time/step_s": interval["time"] / n, "time/data_wait_s": interval["wait"] / n,
                              "time/forward_backward_s": interval["fb"] / n, "time/optimizer_comm_s": interval["opt"] / n,
                              "data/stage": stage, "data/consumed_samples": consumed}
                    values.update({f"data/samples/{name}": int(c) for name, c in zip(names, per_source)})
                    line = (f"step {step}/{t.train_steps} | loss {interval['loss'] / n:.4f} | lr {lr:.3g} | "
                            f"grad norm {norm_value:.3f} | {tokens_per_s:,.0f} tok/s | {tflops:.3g} TFLOP/s/device")
                    if peak:
                        values["perf/mfu"] = tflops / peak
                        line += f" {100 * tflops / peak:.1f}% MFU"
                    line += (f" | step {interval['time'] / n:.3f}s (data {interval['wait'] / n:.3f}, "
                             f"fwd+bwd {interval['fb'] / n:.3f}, opt+comm {interval['opt'] / n:.3f})")
                    if env.device.type == "cuda":
                        values["mem/peak_gib"] = torch.cuda.max_memory_allocated(env.device) / 2**30
                        line += f" | peak mem {values['mem/peak_gib']:.1f} GiB"
                    line += f" | stage {train_data.stages[stage].name}"
                    if guard.total_skipped:
                        line += f" | skipped {guard.total_skipped}"
                    log.scalars(step, values)
                    print_rank0(line)
                    interval = dict.fromkeys(interval, 0.0)
                    interval["steps"] = 0

                stopping = stop.agreed(env.device, env.world_size)  # before validation: torchrun kills 30 s after SIGTERM
                if (not stopping and t.eval_interval and step % t.eval_interval == 0 and step != t.train_steps
                        and eval_data):
                    summary["validation"][step] = run_validation(step)
                exiting = bool(t.exit_interval) and step % t.exit_interval == 0 and step != t.train_steps
                if stopping or exiting or step == t.train_steps or (t.save_interval and step % t.save_interval == 0):
                    last_checkpoint = save(step)
                if stopping or exiting:
                    print_rank0(f"stopping at step {step} ({'SIGTERM' if stopping else 'exit_interval'}); "
                                f"run the same command to resume from {last_checkpoint}")
                    break
        if step == t.train_steps and eval_data:
            summary["validation"][step] = run_validation(step)
    finally:
        loader.close()
        log.close()
    summary.update(end_step=step, checkpoint=last_checkpoint, tensorboard_dir=tb_dir, world_size=env.world_size)
    return summary
