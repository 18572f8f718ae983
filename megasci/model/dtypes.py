"""The one table of parameter dtypes by name, shared by configs, tools and the HF export."""

import torch

# float64 is for exactness tests (ZeRO against torch.optim.AdamW); training runs in the other three.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def dtype_name(dtype: torch.dtype) -> str:
    """The table's name for `dtype` (the spelling configs and transformers' `torch_dtype` use)."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"dtype {dtype} is not one of {sorted(DTYPES)}")
