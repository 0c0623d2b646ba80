"""Counter-based random streams keyed by (seed, stream name, index).

Every random quantity of a simulation is drawn from its own stream, so a value
never depends on the order of calls, on how cells are chunked, on the number of
threads or on the device: the residual noise of cell block 7 is always
``stream(seed, "residual", 7)``.
"""

from __future__ import annotations

import zlib

import numpy as np

#: Cells are grouped into fixed blocks of this many cells for their random
#: streams; chunk sizes are rounded to multiples of it.
CELL_BLOCK = 256


def stream(seed: int, name: str, *index: int) -> np.random.Generator:
    """Return the Philox generator of stream ``name`` at ``index``.

    Parameters
    ----------
    seed : int
        The simulation seed (non-negative).
    name : str
        Stream name, e.g. ``"residual"``.
    *index : int
        Further keys, e.g. the cell block.

    Returns
    -------
    numpy.random.Generator
        A generator whose output depends only on ``(seed, name, *index)``.
    """
    entropy = [int(seed), zlib.crc32(name.encode()), *(int(i) for i in index)]
    return np.random.Generator(np.random.Philox(np.random.SeedSequence(entropy)))
