"""The crop's pixel grid and what rendering and degradations compute on it alike: pixel
coordinates, smooth noise read from one shared table, and smoothstep."""

from __future__ import annotations

import numpy as np

from pipeline.synth.types import SIZE

GRID = np.arange(SIZE, dtype=np.float32)
PIXELS_X, PIXELS_Y = np.meshgrid(GRID, GRID)
_NOISE_SIZE, _NOISE_TEXELS = 512, 8.0


def _noise_table() -> np.ndarray:
    """One shared tileable table of smooth noise in [0, 1] (mean 0.5, sd 0.2) whose blobs are
    about `_NOISE_TEXELS` texels across; identities differ by where they read it. Read with a
    single nearest-texel lookup, which is several times cheaper than value noise."""
    white = np.random.default_rng(0x5EED).standard_normal((_NOISE_SIZE, _NOISE_SIZE))
    freq = np.fft.fftfreq(_NOISE_SIZE) ** 2
    sigma = _NOISE_TEXELS / 2.5
    gain = np.exp(-2 * (np.pi * sigma) ** 2 * (freq[:, None] + freq[None, :]))
    smooth = np.fft.ifft2(np.fft.fft2(white) * gain).real
    return np.clip(0.5 + 0.2 * smooth / smooth.std(), 0, 1).astype(np.float32).ravel()


_NOISE = _noise_table()


def noise(x, y, cell: float, offset) -> np.ndarray:
    """Smooth noise in [0, 1] with blobs about `cell` units across at points (x, y), read
    from the shared table at `offset` (one identity's patch of it)."""
    k = _NOISE_TEXELS / cell
    ix = (x * k + offset[0] * _NOISE_TEXELS).astype(np.int32) & (_NOISE_SIZE - 1)
    iy = (y * k + offset[1] * _NOISE_TEXELS).astype(np.int32) & (_NOISE_SIZE - 1)
    return np.take(_NOISE, iy * _NOISE_SIZE + ix)


def smoothstep(edge0: float, edge1: float, x):
    # minimum/maximum rather than np.clip: much less overhead on the small boxes used here.
    t = np.minimum(np.maximum((x - edge0) * (1 / (edge1 - edge0)), 0.0), 1.0)
    return t * t * (3 - 2 * t)
