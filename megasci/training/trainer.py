"""The pretraining run: a `Trainer` built from the config, whose `train()` loop calls the components.

    train_step.py  one optimizer step: micro-batches, gradient sync, spike guard, sharded AdamW
    validator.py   validation losses and perplexities, every `eval_interval` steps (`due`)
    downstream_eval.py  downstream task scores (megasci.downstream), every `eval.interval` steps (`due`)
    checkpoint.py  the Checkpointer: every `save_interval` steps (`due`), the components' state, resume
    metrics.py     per-step scalars and, every `log_interval` steps, the interval's console line
    stop.py        SIGTERM and `exit_interval`
    guard.py, schedule.py, data.py, parallelize.py   the guard, the learning rate, the datasets
                   (rank 0 builds), activation checkpointing and compile applied to the model

Each component decides its own cadence and saves and loads its own state: the checkpointer stores
whatever the components it is given return from `state_dict` (the guard, the data loader's
position, the optimizer's shards, the RNG streams), so a new stateful component is one more entry in
`components`, with no edit to the checkpointer. Resume happens where the loop starts (`restore`).

Fine-tuning runs through the same loop: `train.init_from` loads a checkpoint's weights only (a
fresh optimizer, this run's schedule and step counter) when `save_dir` holds no checkpoint yet, so
an interrupted fine-tune resumes from its own save_dir. SFT sources (prefixes with a loss mask
beside them) need `data.document_mask`; their loss is the mean over the global batch's scored
tokens (train_step.py).

A divergence never reaches a checkpoint: none is written while the spike guard is skipping steps,
or when the updated weights are not finite or fail the guard on the step's last micro-batch
(`TrainStep.unsafe_to_save`), and keep_last never prunes the last checkpoint saved before skipped steps.
`TrainingDiverged` carries the overrides that roll back (`train.resume_step`, `train.skip_batches`);
docs/checkpoints.md describes the checkpoint files, their verification and the rollback.

Resuming is exact: the whole data state is `consumed_samples`, and the checkpoint holds the model,
every rank's optimizer shard, the spike guard's running mean and the RNG states, so N steps, a
kill, a resume and N more steps give the same losses and parameters as 2N steps in one go.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from megasci.data.loader import DataLoader, DataLoaderConfig
from megasci.distributed import AdamWConfig, ZeroAdamW, default_decay, init_distributed, print_rank0
from megasci.model import build_model, flops_per_token
from megasci.tokenizer import load_tokenizer
from megasci.utils.io import atomic_text_output

from .checkpoint import Checkpointer, RNGStreams, ShardedOptimizer, check_tokenizer_matches, choose_start
from .config import TrainConfig
from .data import build_eval_datasets, build_train_dataset, built_on_rank0, check_tokenizer, stage_seq_lengths
from .downstream_eval import DownstreamEval, load_tasks
from .guard import SpikeGuard, TrainingDiverged
from .lock import lock_for_run
from .metrics import MetricsLog, TrainingMetrics, device_peak_tflops
from .parallelize import apply_activation_checkpointing, apply_compile, apply_fp32_grad_accumulation
from .profiler import StepProfiler
from .schedule import learning_rate
from .stop import StopRequest
from .train_step import TrainStep, check_loss_options
from .validator import Validator

__all__ = ["RunSummary", "Trainer", "TrainingDiverged", "pretrain"]


@dataclasses.dataclass
class RunSummary:
    """What a run did: steps are numbered from 1 (validation at 0 is before the first step)."""

    start_step: int
    world_size: int
    tensorboard_dir: str
    end_step: int = 0
    losses: dict[int, float] = dataclasses.field(default_factory=dict)  # training loss per step
    validation: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)  # losses per source
    skipped: list[int] = dataclasses.field(default_factory=list)  # 0-based steps the guard skipped
    downstream: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)  # eval/<task>/<metric> per step
    checkpoint: str | None = None  # the newest checkpoint of the run (saved or resumed from)


class Trainer:
    """Everything a run needs, set up from `cfg` (resuming from the newest checkpoint in
    `train.save_dir` if there is one); `train()` then runs the remaining steps."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.env = env = init_distributed(None if cfg.train.device == "auto" else cfg.train.device)
        self.lock = lock_for_run(cfg.train.save_dir, env.rank, env.world_size, log=print_rank0)
        try:
            self._set_up(cfg, env)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Releases the save_dir lock (rank 0); the run's end, or a failed set-up."""
        if self.lock is not None:
            self.lock.release()

    def _set_up(self, cfg: TrainConfig, env) -> None:
        t, o = cfg.train, cfg.optim
        model_cfg = cfg.model.build()
        if not cfg.data.tokenizer:
            raise ValueError(
                "data.tokenizer is required: the checkpoint records which tokenizer the model was trained with"
            )
        tokenizer = load_tokenizer(cfg.data.tokenizer)
        downstream_tasks = load_tasks(cfg.eval.tasks, cfg.eval.limit)  # a bad task fails before the data is built
        if model_cfg.vocab_size < tokenizer.vocab_size and t.init_from:  # tokens added: init_from's embeddings grow
            cfg.model.overrides = {**cfg.model.overrides, "vocab_size": tokenizer.vocab_size}  # saved with the run
            model_cfg = cfg.model.build()
        if model_cfg.vocab_size < tokenizer.vocab_size:
            raise ValueError(
                f"model vocab_size {model_cfg.vocab_size} is smaller than the tokenizer's "
                f"{tokenizer.vocab_size} ({cfg.data.tokenizer})"
            )
        longest = max(stage_seq_lengths(cfg))  # a curriculum stage may raise the length
        if longest > model_cfg.max_seq_len:
            raise ValueError(
                f"data.seq_length {longest} (the longest stage's) exceeds the model's max_seq_len "
                f"{model_cfg.max_seq_len}"
            )
        accumulation = DataLoaderConfig(
            t.micro_batch_size, t.global_batch_size, dp_size=env.world_size
        ).accumulation_steps
        cache_dir = cfg.data.cache_dir or os.path.join(t.save_dir, "index_cache")
        self.tensorboard_dir = t.tensorboard_dir or os.path.join(t.save_dir, "tensorboard")
        if env.rank == 0:
            os.makedirs(t.save_dir, exist_ok=True)
            with atomic_text_output(os.path.join(t.save_dir, "config.yaml")) as f:
                f.write(cfg.to_yaml())
        print_rank0(f"config:\n{cfg.to_yaml()}")
        print_rank0(
            f"{env.world_size} data-parallel rank(s) on {env.device}, backend {env.backend}; global batch "
            f"{t.global_batch_size} = micro {t.micro_batch_size} x accumulation {accumulation} x dp {env.world_size}"
        )

        start = choose_start(
            t.save_dir,
            rank=env.rank,
            world_size=env.world_size,
            global_batch_size=t.global_batch_size,
            resume_step=t.resume_step,
            skip_batches=t.skip_batches,
        )
        check_tokenizer_matches(start, tokenizer.identity(), cfg.data.tokenizer)
        self.data = built_on_rank0(
            lambda may_build: build_train_dataset(cfg, cache_dir, may_build), env.rank, env.world_size
        )
        check_tokenizer(self.data, cfg.data.tokenizer, tokenizer.identity())
        if self.data.has_loss_mask and not cfg.data.document_mask:
            raise ValueError(
                "the blend has SFT sources (a loss mask beside the prefix): their conversations are "
                "packed, so set data.document_mask: true"
            )
        eod_mask_id = tokenizer.eod_id if cfg.data.eod_mask_loss else None
        print_rank0("data:\n" + self.data.describe())
        eval_data = built_on_rank0(
            lambda may_build: build_eval_datasets(cfg, self.data, cache_dir, may_build), env.rank, env.world_size
        )

        torch.manual_seed(t.seed)
        self.model = apply_activation_checkpointing(
            build_model(model_cfg, device=env.device), t.activation_checkpointing
        )
        decay = default_decay if not o.decay_embeddings else (lambda name, p: p.dim() >= 2)
        main_grads = o.fp32_grad_accumulation and not o.shard_gradients
        apply_fp32_grad_accumulation(self.model, main_grads)
        optimizer = ZeroAdamW(
            self.model,
            AdamWConfig(lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, max_grad_norm=o.clip_grad),
            bucket_numel=o.bucket_numel,
            decay=decay,
            main_grads=main_grads,
            shard_gradients=o.shard_gradients,
        )
        if t.compile:  # after the optimizer has re-pointed the parameters into its buffers; compiles on first use
            apply_compile(self.model, t.compile)
            print_rank0(f"blocks compiled with torch.compile(backend={t.compile!r})")
        self.guard = SpikeGuard(t.spike_factor, t.spike_warmup_steps, t.max_skipped_steps)
        self.profiler = StepProfiler(t.profile_steps, os.path.join(t.save_dir, "profile"), env.device, env.rank)
        if start.consumed_samples % t.global_batch_size:
            raise ValueError(
                f"the checkpoint consumed {start.consumed_samples} samples, not a multiple of "
                f"global_batch_size {t.global_batch_size}; resume with the batch size it was trained with"
            )
        self.start, self.step, self.initialized_from, self._restored = start, 0, None, False
        self.decay_steps = o.decay_steps if o.decay_steps is not None else max(0, t.train_steps - o.warmup_steps)
        loss_options = {"z_loss": o.z_loss} if o.z_loss else {}
        check_loss_options(loss_options)
        log = MetricsLog(self.tensorboard_dir, active=env.rank == 0)
        log.text("config", cfg.to_yaml())
        log.text("data", self.data.describe())
        self.loader = DataLoader(
            self.data,
            DataLoaderConfig(
                micro_batch_size=t.micro_batch_size,
                global_batch_size=t.global_batch_size,
                dp_rank=env.rank,
                dp_size=env.world_size,
                prefetch=cfg.data.prefetch,
                device=env.device,
                document_mask=cfg.data.document_mask,
                eod_mask_id=eod_mask_id,
            ),
        )
        self.validator = Validator(
            self.model,
            eval_data,
            t.micro_batch_size,
            env.device,
            env.rank,
            env.world_size,
            log,
            document_mask=cfg.data.document_mask,
            eod_mask_id=eod_mask_id,
            interval=t.eval_interval,
        )
        self.downstream = DownstreamEval(
            self.model,
            downstream_tasks,
            tokenizer,
            log,
            device=env.device,
            rank=env.rank,
            world_size=env.world_size,
            interval=cfg.eval.interval,
            batch_size=cfg.eval.batch_size,
            per_example_dir=os.path.join(t.save_dir, "downstream") if cfg.eval.per_example else None,
        )
        self.train_step = TrainStep(
            self.model,
            optimizer,
            self.guard,
            accumulation=accumulation,
            device=env.device,
            world_size=env.world_size,
            timing_sync=t.timing_sync,
            data_wait=lambda: self.loader.wait_seconds,
            count_scored_tokens=self.data.has_loss_mask or eod_mask_id is not None,
            loss_options=loss_options,
        )
        self.metrics = TrainingMetrics(
            log,
            self.data,
            train_steps=t.train_steps,
            global_batch_size=t.global_batch_size,
            seq_length=cfg.data.seq_length,
            flops_per_token=flops_per_token(model_cfg, cfg.data.seq_length),
            flops_at=lambda length: flops_per_token(model_cfg, length),
            world_size=env.world_size,
            peak_tflops=t.peak_tflops or device_peak_tflops(env.device),
            device=env.device,
            rank0=env.rank == 0,
            log_interval=t.log_interval,
        )
        self.stop = StopRequest(t.exit_interval)
        # Each component saves and loads its own state; a new one is one more entry here.
        self.checkpointer = Checkpointer(
            t.save_dir,
            model=self.model,
            tokenizer=tokenizer,
            model_cfg=model_cfg,
            train_cfg=cfg,
            components={
                "spike_guard": self.guard,
                "data": self.loader,
                "optimizer": ShardedOptimizer(optimizer),
                "rng": RNGStreams(),
            },
            rank=env.rank,
            world_size=env.world_size,
            device=env.device,
            keep_last=t.keep_last,
            interval=t.save_interval,
        )

    def learning_rate(self, step: int) -> float:
        o = self.cfg.optim
        return learning_rate(step, o.lr, o.min_lr, o.warmup_steps, self.decay_steps, o.schedule, o.decay_fraction)

    def restore(self) -> None:
        """Where the loop starts (`train` calls it; once): the chosen checkpoint's state into every
        component (exact resume), or `train.init_from`'s weights alone (a fine-tune's start), or
        nothing (a fresh run)."""
        if self._restored:
            return
        self._restored = True
        if self.start.path is not None:
            self.checkpointer.load(self.start)
            self.step = self.start.step
        elif self.cfg.train.init_from:
            self.initialized_from = self.checkpointer.load_weights(self.cfg.train.init_from)
            self.train_step.optimizer.sync_masters_from_params()

    def train(self) -> RunSummary:
        """Runs to `train.train_steps`, a SIGTERM or `exit_interval`; returns the run's summary."""
        t = self.cfg.train
        try:
            self.restore()
            summary = RunSummary(
                start_step=self.step,
                world_size=self.env.world_size,
                tensorboard_dir=self.tensorboard_dir,
                checkpoint=self.start.path,
            )
            if self.step == 0 and self.validator:
                summary.validation[0] = self.validator(0)
            if self.step == 0 and self.downstream:
                summary.downstream[0] = self.downstream(0)
            self.metrics.start()
            self.model.train()
            with self.stop as stop:
                batches = iter(self.loader)
                while self.step < t.train_steps:
                    lr = self.learning_rate(self.step)
                    self.train_step.accumulation = self.loader.accumulation_at(self.step)  # per stage's micro-batch
                    with self.profiler.step(self.step + 1):
                        result = self.train_step(batches, self.step, lr)
                    if result.skipped is not None:
                        summary.skipped.append(self.step)
                    self.step += 1
                    step, done = self.step, self.step == t.train_steps
                    summary.losses[step] = result.loss
                    self.metrics.step(step, result, lr, self.guard.total_skipped, self.loader.consumed_samples, done)
                    self.downstream.count_step(result.seconds)
                    signalled = stop.agreed(self.env.device, self.env.world_size)  # torchrun kills 30 s after SIGTERM
                    if not signalled and not done and self.validator.due(step):
                        summary.validation[step] = self.validator(step)
                    if not signalled and not done and self.downstream.due(step):
                        summary.downstream[step] = self.downstream(step)
                    exiting = signalled or stop.exit_due(step, done)
                    if exiting or self.checkpointer.due(step, final=done):
                        refused = self.train_step.unsafe_to_save()
                        if refused is None:
                            summary.checkpoint = self.checkpointer.save(step, self.guard.total_skipped)
                        else:
                            print_rank0(f"step {step}: no checkpoint written: {refused}")
                    if exiting:
                        print_rank0(
                            f"stopping at step {step} ({'SIGTERM' if signalled else 'exit_interval'}); "
                            f"run the same command to resume from {summary.checkpoint}"
                        )
                        break
            if self.step == t.train_steps and self.validator:
                summary.validation[self.step] = self.validator(self.step)
            if self.step == t.train_steps and self.downstream:
                summary.downstream[self.step] = self.downstream(self.step)
            self.downstream.report()
        except TrainingDiverged as error:
            raise self._diverged(error) from None
        finally:
            self.loader.close()
            self.metrics.log.close()
            self.close()
        summary.end_step = self.step
        return summary

    def _diverged(self, error: TrainingDiverged) -> TrainingDiverged:
        """`error` with the way back: the last good checkpoint, the data to skip, the overrides."""
        o = self.cfg.optim
        diverged_step = self.step + 1  # the step the guard gave up on (1-based)
        checkpoint, overrides = self.checkpointer.rollback_overrides(diverged_step)
        if checkpoint is None:
            advice = (
                f"no checkpoint was written before it; start again in an empty train.save_dir with a lower "
                f"optim.lr (now {o.lr:g}) or a longer optim.warmup_steps (now {o.warmup_steps})"
            )
        else:
            advice = (
                f"the last good checkpoint is {checkpoint}. Roll back to it, skipping the batches from it "
                f"through step {diverged_step}, by running the same command with {' '.join(overrides)}; "
                f"if the divergence comes back, also lower optim.lr (now {o.lr:g}, e.g. optim.lr={o.lr / 2:g}) "
                f"or lengthen optim.warmup_steps (now {o.warmup_steps}). docs/checkpoints.md has the details"
            )
        return TrainingDiverged(f"{error}. {advice}", overrides)


def pretrain(cfg: TrainConfig) -> RunSummary:
    """Trains per `cfg`, resuming from the newest checkpoint in `train.save_dir` if there is one."""
    return Trainer(cfg).train()
