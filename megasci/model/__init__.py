"""The LLaMA-style decoder, its configuration and counts, and the HuggingFace mapping."""

from .config import (
    PRESETS,
    ModelConfig,
    flops_per_token,
    get_config,
    num_matmul_parameters,
    num_parameters,
    parameter_breakdown,
)
from .hf_mapping import from_hf_state_dict, hf_config_dict, to_hf_state_dict
from .llama import Transformer, build_model

__all__ = [
    "PRESETS",
    "ModelConfig",
    "Transformer",
    "build_model",
    "flops_per_token",
    "from_hf_state_dict",
    "get_config",
    "hf_config_dict",
    "num_matmul_parameters",
    "num_parameters",
    "parameter_breakdown",
    "to_hf_state_dict",
]
