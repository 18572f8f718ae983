"""Reading a HuggingFace Llama-family directory: config.json into our `ModelConfig`, and the safetensors
weights (`model.safetensors`, or the shards `model.safetensors.index.json` lists) into our state dict.

Only what our decoder computes exactly is accepted. Anything else (attention or MLP biases, sliding
windows, QK-norm, mixtures of experts, dropout, another `model_type` or activation, a RoPE variant we do
not compute) is refused from config.json alone, before a weight is read or a file written, with the file
and every offending key named. The names are hf_mapping.py's, used in reverse, so export and import
share one mapping. Writing the checkpoint is tools/import_hf.py's job: the checkpoint writer lives a
layer above the model.
"""

from __future__ import annotations

import json
import os

from .config import ModelConfig
from .dtypes import DTYPES
from .hf_mapping import from_hf_state_dict

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# tokenizer.model first where both are present: a SentencePiece model is what our export writes back byte for byte
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
_ACTIVATIONS = ("silu", "swish")  # transformers' names for the same function
_QK_NORM_KEYS = ("qk_norm", "use_qk_norm", "qk_layernorm")
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")


class HFImportError(ValueError):
    """A HuggingFace directory we cannot import exactly; the message names the file and the key."""


def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise HFImportError(f"{path}: missing; a HuggingFace model directory has a {CONFIG_FILE}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HFImportError(f"{path}: unreadable ({error})") from None
    if not isinstance(config, dict):
        raise HFImportError(f"{path}: not a JSON object")
    return config


def _rope(config: dict) -> tuple[float, dict | None, int | None]:
    """(theta, our rope_scaling, the max_seq_len a `dynamic` scaling implies) from either transformers 5's
    `rope_parameters` or 4.x's flat `rope_theta` and `rope_scaling`."""
    params = dict(config.get("rope_parameters") or {})
    legacy = dict(config.get("rope_scaling") or {})
    theta = params.pop("rope_theta", config.get("rope_theta", 10_000.0))
    scaling = params or legacy
    if "type" in scaling and "rope_type" not in scaling:  # transformers 4's older spelling
        scaling["rope_type"] = scaling.pop("type")
    if scaling.get("rope_type", "default") == "default":
        return float(theta), None, None
    if scaling["rope_type"] == "dynamic":  # transformers reads its original length from max_position_embeddings
        original = config.get("max_position_embeddings")
        scaling.setdefault("original_max_position_embeddings", original)
        return float(theta), scaling, int(original * scaling.get("factor", 1))
    return float(theta), scaling, None


def _refusals(config: dict) -> list[str]:
    """Every key whose value our decoder cannot reproduce, each with why."""
    problems = []
    model_type = config.get("model_type")
    if model_type != "llama":
        problems.append(f"model_type is {model_type!r}; only 'llama' (LlamaForCausalLM) is imported")
    arch = config.get("architectures")
    if arch is not None and arch != ["LlamaForCausalLM"]:
        problems.append(f"architectures is {arch!r}, not ['LlamaForCausalLM']")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            problems.append(f"{key} is {config[key]!r}: our linear layers have no biases")
    act = config.get("hidden_act", "silu")
    if act not in _ACTIVATIONS:
        problems.append(f"hidden_act is {act!r}: our MLP is SwiGLU (silu)")
    if config.get("sliding_window") is not None and config.get("use_sliding_window") is not False:
        problems.append(f"sliding_window is {config['sliding_window']!r}: our attention is full causal")
    problems += [f"{k} is {config[k]!r}: our attention has no QK-norm" for k in _QK_NORM_KEYS if config.get(k)]
    problems += [
        f"{k} is {config[k]!r}: our MLP is dense, not a mixture of experts" for k in _MOE_KEYS if config.get(k)
    ]
    for key in ("attention_dropout", "hidden_dropout", "mlp_dropout"):
        if config.get(key):
            problems.append(f"{key} is {config[key]!r}: our model has no dropout")
    return problems


def model_config_from_hf(config: dict, where: str) -> ModelConfig:
    """Our config for HF `config` (read from `where`), or HFImportError naming every key we cannot honour."""
    problems = _refusals(config)
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    problems += [f"{k} is missing" for k in required if config.get(k) is None]
    dtype = config.get("torch_dtype", config.get("dtype")) or "float32"
    if dtype not in DTYPES:
        problems.append(f"torch_dtype is {dtype!r}, not one of {sorted(DTYPES)}")
    try:
        theta, scaling, dynamic_len = _rope(config)
    except (TypeError, ValueError, AttributeError) as error:
        problems.append(f"rope_parameters / rope_scaling cannot be read ({error})")
    if problems:
        raise HFImportError(f"{where}: cannot import exactly: " + "; ".join(problems))
    n_heads = config["num_attention_heads"]
    head_dim = config.get("head_dim")
    natural = config["hidden_size"] // n_heads if config["hidden_size"] % n_heads == 0 else None
    fields = dict(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        n_layers=config["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads") or n_heads,
        kv_channels=head_dim if head_dim is not None and head_dim != natural else None,
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        ffn_hidden_size=config["intermediate_size"],
        max_seq_len=dynamic_len or config.get("max_position_embeddings", 2048),
        rope_theta=theta,
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        init_std=float(config.get("initializer_range", 0.02)),
        dtype=dtype,
        name=os.path.basename(os.path.dirname(os.path.abspath(where))),
    )
    if scaling is not None:
        fields["rope_scaling"] = scaling
    try:
        return ModelConfig(**fields)
    except (TypeError, ValueError) as error:  # e.g. a head count, or a RoPE scaling ModelConfig rejects
        raise HFImportError(f"{where}: cannot import exactly: {error}") from None


def weight_files(hf_dir: str) -> tuple[list[str], dict[str, str] | None]:
    """The safetensors files to read, and for a sharded model the index's tensor -> file map; every
    shard the index lists must exist (checked before any is read)."""
    single, index = os.path.join(hf_dir, WEIGHTS_FILE), os.path.join(hf_dir, INDEX_FILE)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise HFImportError(f"{index}: unreadable or without weight_map ({error})") from None
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if not os.path.isfile(os.path.join(hf_dir, shard)):
                tensors = sorted(k for k, v in weight_map.items() if v == shard)
                raise HFImportError(
                    f"{os.path.join(hf_dir, shard)}: missing; {index} lists it in weight_map "
                    f"for {len(tensors)} tensor(s), e.g. {tensors[0]}"
                )
        return [os.path.join(hf_dir, s) for s in shards], weight_map
    if os.path.isfile(single):
        return [single], None
    raise HFImportError(f"{hf_dir}: holds neither {WEIGHTS_FILE} nor {INDEX_FILE} (only safetensors are read)")


def load_hf_state_dict(hf_dir: str, cfg: ModelConfig) -> dict:
    """Our state dict (in `cfg.dtype`, as transformers loads it) from the directory's safetensors, every
    tensor checked against the index, the names the config implies, and the shapes."""
    from safetensors.torch import load_file

    from .llama import build_model

    files, weight_map = weight_files(hf_dir)
    hf_sd, origin = {}, {}
    for file in files:
        for name, tensor in load_file(file).items():
            if name in hf_sd:
                raise HFImportError(f"{file}: tensor {name} is also in {origin[name]}")
            hf_sd[name], origin[name] = tensor, file
    if weight_map is not None:
        for name, shard in weight_map.items():
            if origin.get(name) != os.path.join(hf_dir, shard):
                raise HFImportError(
                    f"{os.path.join(hf_dir, INDEX_FILE)}: weight_map puts {name} in {shard}, "
                    f"but {'it is not there' if name not in origin else 'it is in ' + origin[name]}"
                )
    where = files[0] if len(files) == 1 else os.path.join(hf_dir, INDEX_FILE)
    try:
        ours = from_hf_state_dict(hf_sd, cfg)
    except KeyError as error:
        raise HFImportError(
            f"{where}: tensors do not match {os.path.join(hf_dir, CONFIG_FILE)}: {error.args[0]}"
        ) from None
    shapes = {k: v.shape for k, v in build_model(cfg, device="meta").state_dict().items()}
    dtype = DTYPES[cfg.dtype]
    for name, tensor in ours.items():
        if tensor.shape != shapes[name]:
            hf_name = next(k for k, v in hf_sd.items() if v is tensor)
            raise HFImportError(
                f"{origin[hf_name]}: {hf_name} has shape {tuple(tensor.shape)}, "
                f"{CONFIG_FILE} implies {tuple(shapes[name])}"
            )
        if not tensor.is_floating_point():
            raise HFImportError(f"{where}: {name} holds {tensor.dtype}, not floating-point weights")
    return {k: v.to(dtype) for k, v in ours.items()}


def tokenizer_file(hf_dir: str) -> str:
    """The directory's tokenizer: tokenizer.model, else tokenizer.json (with the configs beside it)."""
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(hf_dir, name)):
            return os.path.join(hf_dir, name)
    raise HFImportError(f"{hf_dir}: holds neither {' nor '.join(TOKENIZER_FILES)}; the model needs its tokenizer")


def config_path(hf_dir: str) -> str:
    return os.path.join(hf_dir, CONFIG_FILE)


def is_hf_model_dir(path: str) -> bool:
    """A HuggingFace model directory (config.json) rather than a megasci checkpoint (meta.json) or save
    directory (config.yaml, step_*): the test every checkpoint-or-HF-directory argument goes through."""
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and not os.path.isfile(os.path.join(path, "meta.json"))


def hf_model_config(hf_dir: str) -> ModelConfig:
    """Our config for the directory's config.json (refusals name the file and the key)."""
    return model_config_from_hf(read_hf_config(hf_dir), config_path(hf_dir))


__all__ = [
    "HFImportError",
    "config_path",
    "hf_model_config",
    "is_hf_model_dir",
    "load_hf_state_dict",
    "model_config_from_hf",
    "read_hf_config",
    "tokenizer_file",
    "weight_files",
]
