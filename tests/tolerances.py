"""Tolerances for comparing two computations that add the same terms in different orders.

Two paths that sum the same n terms in different orders (micro-batches then ranks against one
full batch, a fused `addmm_` against `mm` then `add_`, AVX2 against AVX512 kernels) each stay
within gamma_n * sum|x_i| of the exact sum, gamma_n = n * u / (1 - n * u) with u the unit roundoff
(Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 4.4). So they differ by at
most 2 * gamma_n * sum|x_i|. A test sees only the sum, not the terms: for terms of mixed sign,
sum|x_i| is about sqrt(n) times |sum x_i| (a random walk), and that is the estimate used here, with
the largest reference value as |sum x_i|. The result depends on the dtype, the number of terms and
the data, and on no CPU: a constant tuned on one machine's BLAS is what made the suite fail on
another (1.7e-12 against a hand-set 1e-12 on an AVX512 host).
"""

from __future__ import annotations

import math

import torch


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def reordered_sum_atol(dtype: torch.dtype, n_terms: int, magnitude: float) -> float:
    """Largest expected |a - b| between two orderings of a sum of `n_terms` terms whose sum is about
    `magnitude` in size (see the module docstring for the sqrt(n) estimate of sum|x_i|)."""
    nu = n_terms * unit_roundoff(dtype)
    gamma = nu / (1 - nu)
    return 2 * gamma * math.sqrt(n_terms) * magnitude
