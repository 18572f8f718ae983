"""The training configuration: typed dataclasses, read from YAML, overridden from the command line.

    python tools/pretrain.py --config examples/configs/pretrain_1p36b.yaml optim.lr=2e-4 train.train_steps=100

Every section is a dataclass; an unknown key, or a value of the wrong type, fails before anything
starts, naming the key. Overrides are `section.field=value` with the value read as YAML. Strings in
the file may name environment variables (`prefix: ${DATA}/arxiv_text_document`), so launch
scripts keep data paths as variables; an unset variable is an error. The resolved config (variables
substituted) is printed by rank 0 and saved with the run and in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from typing import Any

import yaml

from megasci.model import ModelConfig, get_config

from .parallelize import CHECKPOINTING_MODES
from .schedule import SCHEDULES


@dataclasses.dataclass
class ModelSection:
    """A preset plus fields of `ModelConfig` to replace (e.g. vocab_size, rope_theta)."""

    preset: str = "tiny"
    overrides: dict = dataclasses.field(default_factory=dict)

    def build(self) -> ModelConfig:
        hints = typing.get_type_hints(ModelConfig)
        unknown = sorted(set(self.overrides) - set(hints))
        if unknown:
            raise KeyError(
                f"unknown model field(s) {', '.join('model.overrides.' + k for k in unknown)}; "
                f"ModelConfig has {', '.join(sorted(hints))}"
            )
        return get_config(
            self.preset, **{k: _coerce(v, hints[k], f"model.overrides.{k}") for k, v in self.overrides.items()}
        )


@dataclasses.dataclass
class DataSection:
    """Where the samples come from: one blend, or a curriculum of stages (see blended_dataset.py)."""

    tokenizer: str = ""  # the training tokenizer's .model; its identity goes into every checkpoint
    seq_length: int = 768
    blend: Any = None  # "w1 prefix1 w2 prefix2", a list, or dicts; shares or epoch multipliers ("2.0x")
    curriculum: list | None = None  # stages: name, blend, end_samples | end_tokens
    split: tuple[float, float, float] = (0.98, 0.01, 0.01)
    cache_dir: str | None = None  # sample-index cache; default <save_dir>/index_cache
    seed: int = 1234
    eval_samples: int = 64  # per source, from its validation split
    prefetch: int = 4
    document_mask: bool = False  # block-causal attention and RoPE restarts per packed document (needed by SFT sources)
    eod_mask_loss: bool = False  # the EOD token as a target is not scored


@dataclasses.dataclass
class OptimSection:
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 100
    decay_steps: int | None = None  # cosine from lr to min_lr over this many steps after warm-up; default: the rest
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay: lr held, then linear to min_lr at the end)
    decay_fraction: float = 0.1  # wsd: the last fraction of the decay_steps that decays
    z_loss: float = 0.0  # weight of mean(logsumexp(logits)^2) added to the loss (PaLM uses 1e-4)

    def __post_init__(self):
        """Values no optimiser can run with fail here, naming the key, not as NaNs or a frozen model later."""
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule: expected one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"optim.decay_fraction: expected a fraction in [0, 1], got {self.decay_fraction}")
        if self.z_loss < 0:
            raise ValueError(f"optim.z_loss: expected a non-negative weight, got {self.z_loss}")
        if not self.lr > 0:
            raise ValueError(f"optim.lr: the peak learning rate must be positive, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"optim.min_lr: expected a value in [0, optim.lr = {self.lr}], got {self.min_lr}")
        for i, beta in enumerate(self.betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"optim.betas[{i}]: expected a value in [0, 1), got {beta}")
        if not self.eps > 0:
            raise ValueError(f"optim.eps: expected a positive value, got {self.eps}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay: expected a non-negative value, got {self.weight_decay}")
        if self.lr * self.weight_decay >= 1:  # decoupled decay multiplies the weights by 1 - lr x weight_decay
            raise ValueError(
                f"optim.weight_decay: {self.weight_decay} x optim.lr {self.lr} is not below 1, so every "
                f"step would zero or flip the sign of the weights"
            )
        if self.clip_grad < 0:
            raise ValueError(f"optim.clip_grad: expected a non-negative norm (0: no clipping), got {self.clip_grad}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps: expected a non-negative number, got {self.warmup_steps}")
        if self.decay_steps is not None and self.decay_steps < 0:
            raise ValueError(f"optim.decay_steps: expected a non-negative number, got {self.decay_steps}")
        if self.bucket_numel < 1:
            raise ValueError(f"optim.bucket_numel: expected a positive number of parameters, got {self.bucket_numel}")

    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_embeddings: bool = False  # weight decay on the input and output embeddings too
    clip_grad: float = 1.0
    bucket_numel: int = 40_000_000  # ZeRO-2 bucket size, in parameters
    fp32_grad_accumulation: bool = True  # matmul weight gradients straight into the fp32 buffer (no bf16 .grad);
    #                                      false: the reference path. Not with shard_gradients (no full buffer)
    shard_gradients: bool = False  # reduce-scatter every micro-batch and keep only this rank's fp32 gradient
    #                                shard (less memory, one reduction per micro-batch); see distributed/zero.py


@dataclasses.dataclass
class TrainSection:
    micro_batch_size: int = 1
    global_batch_size: int = 512  # = micro_batch_size x accumulation steps x data-parallel size
    train_steps: int = 1000
    seed: int = 1234
    device: str = "auto"  # auto | cuda | cpu
    save_dir: str = "checkpoints"
    save_interval: int = 1000
    keep_last: int | None = 3  # None or 0: keep every checkpoint
    exit_interval: int | None = None  # save and exit after this step (as Megatron's --exit-interval)
    log_interval: int = 10
    eval_interval: int = 500
    tensorboard_dir: str | None = None  # default <save_dir>/tensorboard
    peak_tflops: float | None = None  # per device, for MFU; default from the GPU's name
    spike_factor: float = 3.0  # skip a step whose loss exceeds this x the running mean (0: off)
    spike_warmup_steps: int = 20  # steps of history before the spike guard acts
    max_skipped_steps: int = 5  # stop after this many skipped steps in a row
    timing_sync: bool = True  # synchronise the GPU between phases so the step-time split is honest
    activation_checkpointing: str = "none"  # none | selective | full: what each block keeps for the backward
    #                                          pass (training/parallelize.py); examples/configs give a mode per length
    compile: str | None = None  # torch.compile each block with this backend ("inductor"); None: eager, hand-fused ops
    profile_steps: tuple[int, int] | None = None  # [a, b]: profiler trace (and CUDA memory snapshot) of steps a..b
    #                                               into <save_dir>/profile (training/profiler.py)
    init_from: str | None = None  # fine-tuning: weights only from this checkpoint (or save dir) when save_dir has none
    resume_step: int | None = None  # roll back: resume from save_dir's step_<resume_step>, not the newest checkpoint
    #                                 (newer ones are set aside; docs/checkpoints.md)
    skip_batches: int = 0  # with resume_step: skip this many batches after it (the data that led to a divergence)

    def __post_init__(self):
        """Impossible values fail here, naming the key."""
        if self.activation_checkpointing not in CHECKPOINTING_MODES:
            raise ValueError(
                f"train.activation_checkpointing: expected one of {', '.join(CHECKPOINTING_MODES)}, "
                f"got {self.activation_checkpointing!r}"
            )
        for key in ("micro_batch_size", "global_batch_size", "train_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key}: expected a positive number, got {getattr(self, key)}")
        for key in (
            "save_interval",
            "log_interval",
            "eval_interval",
            "spike_warmup_steps",
            "max_skipped_steps",
            "skip_batches",
        ):
            if getattr(self, key) < 0:
                raise ValueError(f"train.{key}: expected a non-negative number, got {getattr(self, key)}")
        for key in ("keep_last", "exit_interval"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise ValueError(f"train.{key}: expected a non-negative number or null, got {getattr(self, key)}")
        if self.spike_factor != 0 and not self.spike_factor > 1:
            raise ValueError(f"train.spike_factor: expected 0 (off) or a factor above 1, got {self.spike_factor}")
        if self.resume_step is not None and self.resume_step < 0:
            raise ValueError(f"train.resume_step: expected a checkpoint's step, got {self.resume_step}")
        if self.resume_step is not None and self.resume_step + self.skip_batches > self.train_steps:
            raise ValueError(
                f"train.skip_batches: resuming at step {self.resume_step} and skipping "
                f"{self.skip_batches} batches goes past train.train_steps {self.train_steps}"
            )
        if self.skip_batches and self.resume_step is None:
            raise ValueError(
                "train.skip_batches: only with train.resume_step (the checkpoint the skipped batches follow)"
            )


@dataclasses.dataclass
class EvalSection:
    """Downstream tasks scored in the training loop (training/downstream_eval.py, docs/evaluation.md): at
    step 0 of a fresh run, every `interval` steps and at the last step. No tasks: none (old configs)."""

    tasks: list = dataclasses.field(default_factory=list)  # task names (tools/eval_tasks.py's) or .jsonl files
    interval: int = 1000  # steps between evaluations (0: only at the start and the end)
    limit: int | None = None  # the first N examples of each task; null: all of them
    batch_size: int = 16  # requests per forward pass
    per_example: bool = False  # also write each example's scores to <save_dir>/downstream/step_<N>.jsonl

    def __post_init__(self):
        """Impossible values fail here, naming the key; unknown task names fail when the run starts."""
        for i, task in enumerate(self.tasks):
            if not isinstance(task, str) or not task:
                raise ValueError(f"eval.tasks[{i}]: expected a task name or a .jsonl file, got {task!r}")
        if self.interval < 0:
            raise ValueError(f"eval.interval: expected a non-negative number of steps, got {self.interval}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"eval.limit: expected a positive number of examples or null, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size: expected a positive number, got {self.batch_size}")


@dataclasses.dataclass
class TrainConfig:
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)  # downstream tasks in the loop

    def __post_init__(self):
        """Checks between sections."""
        if self.optim.warmup_steps > self.train.train_steps:
            raise ValueError(
                f"optim.warmup_steps: {self.optim.warmup_steps} is more than train.train_steps "
                f"{self.train.train_steps}, so the learning rate would never reach optim.lr"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False, default_flow_style=False)


def _plain(value):
    """Tuples as lists, so the YAML is the plain kind `safe_load` reads back."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# Types whose values are checked but never converted, with how an error names them.
_TAKEN_AS_IS = {list: "a list", dict: "a mapping", bool: "true or false", str: "a string"}


def _coerce(value, hint, where: str):
    """`value` as type `hint`, for the simple types a config uses; anything else fails naming `where`."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except (TypeError, ValueError) as error:
                errors.append(str(error))
        raise TypeError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise TypeError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    plain = list if origin is list else hint
    if plain in _TAKEN_AS_IS:
        if not isinstance(value, plain):
            raise TypeError(f"{where}: expected {_TAKEN_AS_IS[plain]}, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, str):  # a ${VARIABLE} substituted into the value, or 4e7 (YAML reads it as text)
            try:
                value = int(value.replace("_", ""))
            except ValueError:
                try:
                    value = float(value)
                except ValueError:
                    pass
        if isinstance(value, float) and value.is_integer():  # 4e7 written for 40000000
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool):
            raise TypeError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)  # YAML reads 3e-4 (no dot) as a string
        except (TypeError, ValueError):
            raise TypeError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{where}: expected a finite number, got {value!r}")
        return number
    raise TypeError(f"{where}: unsupported type {hint}")


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise TypeError(f"{where or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise KeyError(
            f"unknown config key(s) {', '.join((where + '.' if where else '') + k for k in unknown)}; "
            f"{where or 'the config'} has {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, key)
        else:
            kwargs[name] = _coerce(value, hint, key)
    return cls(**kwargs)


def _move_legacy_checkpointing(values: dict) -> dict:
    """`model.overrides.checkpointing` (configs before activation checkpointing became training policy)
    read as `train.activation_checkpointing`, with a note; both set differently is an error."""
    overrides = (values.get("model") or {}).get("overrides") or {}
    if "checkpointing" not in overrides:
        return values
    values = {**values, "model": {**values["model"], "overrides": dict(overrides)}}
    mode = values["model"]["overrides"].pop("checkpointing")
    train = dict(values.get("train") or {})
    if train.get("activation_checkpointing", mode) != mode:
        raise ValueError(
            f"model.overrides.checkpointing {mode!r} and train.activation_checkpointing "
            f"{train['activation_checkpointing']!r} disagree; keep train.activation_checkpointing only"
        )
    train["activation_checkpointing"] = mode
    print(
        f"note: model.overrides.checkpointing is training policy now; read as train.activation_checkpointing: {mode}",
        flush=True,
    )
    return {**values, "train": train}


def config_from_dict(values: dict) -> TrainConfig:
    cfg = _build(TrainConfig, _move_legacy_checkpointing(values or {}), "")
    cfg.model.build()  # a bad preset or model field fails here, not on the first step
    return cfg


_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def expand_variables(value, where: str = ""):
    """`${NAME}` / `$NAME` in every string of a nested config replaced from the environment."""
    if isinstance(value, dict):
        return {k: expand_variables(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_variables(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):

        def substitute(match):
            name = match.group(1) or match.group(2)
            if name not in os.environ:
                raise ValueError(f"{where}: environment variable {name} is not set (in {value!r})")
            return os.environ[name]

        return _VARIABLE.sub(substitute, value)
    return value


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """`section.field=value` pairs (value parsed as YAML) applied to a nested dict, in order.

    A number in the path indexes a list: `data.curriculum.0.end_samples=1000`."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form section.field=value")
        path, text = item.split("=", 1)
        keys = path.strip().split(".")
        node = values
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ValueError(
                        f"override {item!r}: {'.'.join(keys[:depth]) or 'config'} is a list of "
                        f"{len(node)}; {key!r} is not an index into it"
                    )
                key = int(key)
            elif not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {'.'.join(keys[:depth])} is not a section")
            if last:
                node[key] = yaml.safe_load(text)
            else:
                if isinstance(node, dict) and node.get(key) is None:
                    node[key] = {}
                node = node[key]
    return values


def load_config(path: str | None = None, overrides: list[str] = ()) -> TrainConfig:
    """The config from a YAML file (optional) with overrides applied; errors name the file."""
    values = {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"{path}: cannot read the config: {error}") from error
    try:
        values = expand_variables(apply_overrides(values, list(overrides)))
        return config_from_dict(values)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path or 'config'}: {error}") from error
