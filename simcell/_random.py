"""The one seeding API of the harness: independent random streams named by keys.

A stream is keyed by a seed and a sequence of names (strings or integers), e.g.
``stream(seed, "task_3", "oracle")``, and never by call order or by offsets such
as ``seed + 101 + i``: adding, removing or reordering one consumer leaves every
other stream unchanged.
"""

from __future__ import annotations

import hashlib

import numpy as np

Key = str | int


def _key_words(key: Key) -> list[int]:
    """A stable (process- and platform-independent) 64-bit hash of one key, as two words."""
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (str, int, np.integer)):
        raise TypeError(f"stream keys are str or int, got {type(key).__name__}")
    text = f"s:{key}" if isinstance(key, str) else f"i:{int(key)}"
    digest = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return [digest & 0xFFFFFFFF, digest >> 32]


def seed_sequence(seed: int, *names: Key) -> np.random.SeedSequence:
    """The :class:`numpy.random.SeedSequence` of the stream ``(seed, *names)``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"seed must be a non-negative integer, got {seed!r}")
    words = [int(seed) & 0xFFFFFFFF, int(seed) >> 32, len(names)]
    for name in names:
        words += _key_words(name)
    return np.random.SeedSequence(words)


def stream(seed: int, *names: Key) -> np.random.Generator:
    """An independent generator for the stream named ``names`` under ``seed``.

    Parameters
    ----------
    seed : int
        Non-negative run seed.
    *names : str or int
        The stream's name, e.g. ``("task_0", "corruption", "missing", 3)``. A string
        and an integer with the same digits are different keys.

    Returns
    -------
    numpy.random.Generator
        Depends only on ``(seed, *names)``.

    Examples
    --------
    >>> a = stream(0, "task_0", "oracle").random()
    >>> a == stream(0, "task_0", "oracle").random()
    True
    """
    return np.random.default_rng(seed_sequence(seed, *names))


def int_seed(seed: int, *names: Key) -> int:
    """A 31-bit integer seed derived from the stream ``(seed, *names)``, for APIs
    (scikit-learn, torch) that take an integer ``random_state``."""
    return int(seed_sequence(seed, *names).generate_state(1, dtype=np.uint32)[0] >> 1)
