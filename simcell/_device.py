"""The one device resolver: the simulator, the models and the harness all ask it.

A request is resolved once, up front, so that a run never starts on one device
after being asked for another (or records a device it did not use).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from simcell import SimcellError

if TYPE_CHECKING:  # pragma: no cover
    import torch

_CUDA = re.compile(r"cuda(:\d+)?")


def resolve_device(device: str | torch.device = "auto") -> str:
    """Turn a device request into the device a run will use.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` (CUDA when torch sees a GPU, else the CPU), ``"cpu"``,
        ``"cuda"`` or ``"cuda:<index>"``.

    Returns
    -------
    str
        ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.

    Raises
    ------
    simcell.SimcellError
        For any other string, or a CUDA device that torch cannot see.
    """
    text = str(device)
    if text == "cpu":
        return "cpu"
    if text != "auto" and not _CUDA.fullmatch(text):
        raise SimcellError(f"unknown device {text!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'")
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        if text == "auto":
            return "cpu"
        raise SimcellError(f"device {text!r} needs torch, which is not installed") from None
    if not torch.cuda.is_available():
        if text == "auto":
            return "cpu"
        raise SimcellError(f"device {text!r} was requested but CUDA is not available")
    if text == "auto":
        return "cuda"
    index = int(text.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise SimcellError(
            f"device {text!r} was requested but torch sees {torch.cuda.device_count()} GPU(s)"
        )
    return text
