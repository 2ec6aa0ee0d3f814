"""Seeds: every random stream in the pipeline derives from the root ``seed`` and a purpose name.

One derivation for every stage, so a stream never depends on which stage asks, the order of the
calls, or the process (Python's ``hash`` of a string changes between processes; ``crc32`` does
not). Streams with different purposes are independent (numpy's ``SeedSequence`` mixes its
entropy words), and the same params give the same draws on any machine.

Examples
--------
>>> rng("bootstrap", "cvd_event_5y", root=7).integers(0, 10, 3)
array([4, 8, 0])
>>> derive("features", "split", root=7) == derive("features", "split", root=7)
True
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["derive", "rng", "sequence"]


def _word(part: str | int) -> int:
    if isinstance(part, bool):  # bool is an int: refuse the ambiguity rather than alias 1
        raise TypeError("a seed purpose part must be a str or an int, not a bool")
    if isinstance(part, int):
        if part < 0:
            raise ValueError(f"a seed purpose part must be non-negative (got {part})")
        return part
    return zlib.crc32(part.encode("utf-8"))


def sequence(*purpose: str | int, root: int) -> np.random.SeedSequence:
    """The ``SeedSequence`` of one purpose, e.g. ``sequence("audit", target, "bootstrap")``.

    Parameters
    ----------
    *purpose
        Names (hashed with crc32) and non-negative integers (chunk numbers) that identify the
        stream; the order matters.
    root
        The project's root seed (``params.seed``).
    """
    return np.random.SeedSequence([root, *(_word(part) for part in purpose)])


def rng(*purpose: str | int, root: int) -> np.random.Generator:
    """A numpy Generator for one purpose (see :func:`sequence`)."""
    return np.random.default_rng(sequence(*purpose, root=root))


def derive(*purpose: str | int, root: int, bits: int = 31) -> int:
    """An integer seed of ``bits`` bits for libraries that take one (LightGBM, hashing).

    Parameters
    ----------
    *purpose, root
        As in :func:`sequence`.
    bits
        Width of the result, at most 64 (LightGBM wants a positive 31-bit int).
    """
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in 1-64 (got {bits})")
    state = sequence(*purpose, root=root).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & ((1 << bits) - 1))
