"""CPU thread limits for every stage (torch and the BLAS/OpenMP pools)."""

from __future__ import annotations

import torch


def set_threads(n: int | None) -> None:
    """Use `n` threads in torch and in the BLAS/OpenMP pools numpy and scikit-learn use.

    KID and precision/recall are many small matrix products: with several BLAS threads on a
    busy machine they run orders of magnitude slower than on one, so rules pass their
    `threads` here. None keeps the libraries' defaults.
    """
    if not n:
        return
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)
