"""Random draws of identities, variations and degradations, and the `DegradationPolicy`
that decides which degradations an image gets, how often and how many at once."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pipeline.synth.types import (
    DEGRADATIONS,
    PROPORTION_POINTS,
    SIZE,
    Degradation,
    Identity,
    Variation,
)

_SKIN_TONES = np.array(
    [
        [0.98, 0.86, 0.78],
        [0.93, 0.76, 0.64],
        [0.85, 0.64, 0.50],
        [0.72, 0.50, 0.36],
        [0.56, 0.37, 0.25],
        [0.38, 0.25, 0.17],
        [0.25, 0.16, 0.11],
    ]
)
_HAIR_COLOURS = {
    "black": (0.07, 0.06, 0.06),
    "dark_brown": (0.20, 0.13, 0.09),
    "brown": (0.38, 0.25, 0.15),
    "light_brown": (0.55, 0.40, 0.25),
    "blond": (0.80, 0.66, 0.42),
    "red": (0.60, 0.27, 0.12),
    "grey": (0.58, 0.57, 0.55),
    "white": (0.86, 0.85, 0.82),
}
_EYE_COLOURS = {
    "dark_brown": (0.22, 0.12, 0.07),
    "brown": (0.40, 0.23, 0.11),
    "hazel": (0.50, 0.42, 0.20),
    "green": (0.30, 0.48, 0.28),
    "blue": (0.30, 0.48, 0.72),
    "grey": (0.48, 0.53, 0.58),
}
_HAIR_STYLES = ("bald", "buzz", "short", "fringe", "long", "bun", "curly")
_BEARDS = ("none", "stubble", "moustache", "goatee", "full")
_GLASSES = ("none", "round", "square")
_BACKGROUNDS = ("flat", "gradient", "noise")
_OCCLUDERS = ("sunglasses", "mask", "patch")

# Shape traits spread this many times their adult anthropometric spreads (the sds written in
# `sample_identity`): real faces also differ in fine detail that this renderer leaves out, and
# at 1x dlib's FR model (docs/evaluation.md) finds too many look-alikes among our identities.
_IDENTITY_SPREAD = 1.5
# The sd (pixels) of an identity's outline offsets at `PROPORTION_POINTS`.
_PROPORTION_SD = 3.0
# The face's skin primitives after the cranium (which the hair cap follows) are moved by up
# to 5% of their radii and scaled by up to 8% per axis (one standard deviation).
_RELIEF_PRIMITIVES = 14
_RELIEF_SD = (0.05, 0.05, 0.05, 0.08, 0.08, 0.08)


def _normal(rng: np.random.Generator, sd: float, limit: float = 2.5) -> float:
    """A zero-mean normal draw clipped at `limit` standard deviations."""
    return max(-limit, min(limit, float(rng.standard_normal()))) * sd


def _colour(base, rng: np.random.Generator, sd: float) -> tuple[float, float, float]:
    # Mostly a change of brightness, a little of hue: grey hair should stay grey.
    jitter = np.asarray(base) * (1.0 + rng.normal(0.0, sd)) + rng.normal(0.0, sd * 0.15, 3)
    return tuple(float(c) for c in np.clip(jitter, 0.02, 0.98))


def _index(rng: np.random.Generator, weights) -> int:
    """An index drawn with probability proportional to `weights`."""
    cumulative = list(itertools.accumulate(weights))
    return min(bisect.bisect(cumulative, rng.random() * cumulative[-1]), len(cumulative) - 1)


def _pick(rng: np.random.Generator, options: tuple, weights) -> str:
    return options[_index(rng, weights)]


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one person. Shape numbers vary around 1; each is written with a spread close to
    adult anthropometry (a few to 10 % for lengths and widths), widened by `_IDENTITY_SPREAD`.
    Masculinity shifts the sexually dimorphic ones, age deepens lines and folds."""

    def trait(sd: float) -> float:
        return _normal(rng, sd * _IDENTITY_SPREAD)

    masc = float(rng.uniform())
    age = float(rng.beta(1.3, 1.6))
    melanin = float(rng.beta(1.1, 1.3))
    tone = melanin * 6
    low = int(min(tone, 5))
    skin = _SKIN_TONES[low] + (_SKIN_TONES[low + 1] - _SKIN_TONES[low]) * (tone - low)
    skin = skin * (1.0 + np.array([1.0, -0.3, -1.0]) * rng.normal(0, 0.04)) + rng.normal(0, 0.015)
    skin_colour = tuple(float(c) for c in np.clip(skin, 0.05, 0.98))
    lips = np.array(skin_colour) * np.array([0.86, 0.55, 0.56]) * (1 + rng.normal(0, 0.07, 3))
    lip_colour = tuple(float(c) for c in np.clip(lips + np.array([0.04, 0.0, 0.02]), 0.03, 0.95))

    dark = melanin > 0.45
    hair_names = tuple(_HAIR_COLOURS)
    hair_weights = (
        [6, 3, 1, 0.2, 0.05, 0.05, 0.5, 0.2] if dark else [1.5, 2.5, 2.5, 1.8, 1.6, 0.7, 0.8, 0.4]
    )
    hair_name = _pick(rng, hair_names, hair_weights)
    hair_colour = _colour(_HAIR_COLOURS[hair_name], rng, 0.12)
    brow = np.array(hair_colour) * (0.55 if hair_name in ("grey", "white", "blond") else 0.85)
    brow_colour = tuple(float(c) for c in np.clip(brow, 0.03, 0.9))
    eye_names = tuple(_EYE_COLOURS)
    eye_weights = [6, 3, 0.6, 0.2, 0.1, 0.1] if dark else [1.5, 2, 1.5, 1.2, 2, 1]
    eye_colour = _colour(_EYE_COLOURS[_pick(rng, eye_names, eye_weights)], rng, 0.1)

    style = _pick(rng, _HAIR_STYLES, [0.4 * masc, 1.0, 2 + masc, 1, 3 * (1 - masc), 1 - masc, 1])
    beard = "none"
    if masc > 0.55 and rng.random() < 0.55:
        beard = _pick(rng, _BEARDS[1:], [2, 1, 1, 1.5])
    glasses = _pick(rng, _GLASSES, [3.2, 0.5, 0.5])
    frame = _pick(rng, ("black", "metal", "brown", "colour"), [3, 2, 2, 1])
    frame_colour = {
        "black": (0.05, 0.05, 0.06),
        "metal": (0.62, 0.60, 0.56),
        "brown": (0.30, 0.18, 0.10),
        "colour": tuple(float(c) for c in rng.uniform(0.1, 0.8, 3)),
    }[frame]
    moles = tuple(
        (_normal(rng, 14), float(rng.uniform(-12, 50)), float(rng.uniform(0.5, 1.1)))
        for _ in range(_index(rng, [0.45, 0.3, 0.15, 0.1]))
    )
    return Identity(
        masculinity=masc,
        age=age,
        head_width=1 + trait(0.06) + 0.06 * (masc - 0.5),
        head_length=1 + trait(0.06),
        jaw_width=1 + trait(0.10) + 0.15 * (masc - 0.5),
        chin_width=1 + trait(0.15) + 0.3 * (masc - 0.5),
        chin_length=1 + trait(0.08),
        cheekbones=float(rng.uniform()),
        cheek_fullness=float(rng.uniform()),
        brow_ridge=float(np.clip(masc + trait(0.3), 0, 1)),
        eye_spacing=1 + trait(0.07),
        eye_width=1 + trait(0.11) - 0.1 * (masc - 0.5),
        eye_height=1 + trait(0.2) - 0.2 * (masc - 0.5),
        eye_tilt=trait(6.0),
        eye_depth=trait(0.9) + masc - 0.5,
        brow_height=1 + trait(0.15) - 0.2 * (masc - 0.5),
        brow_thickness=1 + trait(0.3) + 0.5 * (masc - 0.5),
        brow_arch=float(rng.uniform(0.1, 1.0)),
        brow_length=1 + trait(0.1),
        brow_slope=trait(2.5),
        nose_length=1 + trait(0.11) + 0.08 * (masc - 0.5),
        nose_width=1 + trait(0.18) + 0.2 * melanin,
        nose_projection=1 + trait(0.18) + 0.15 * (masc - 0.5),
        nose_bridge=1 + trait(0.22),
        nose_tip=1 + trait(0.18),
        mouth_width=1 + trait(0.08),
        mouth_height=1 + trait(0.08),
        upper_lip=1 + trait(0.3) + 0.3 * melanin - 0.3 * (masc - 0.5),
        lower_lip=1 + trait(0.3) + 0.3 * melanin - 0.3 * (masc - 0.5),
        ear_size=1 + trait(0.1),
        ear_angle=float(rng.uniform()),
        skin_colour=skin_colour,
        skin_texture=float(rng.uniform(0.01, 0.045)),
        blotchiness=float(rng.uniform(0.02, 0.10)),
        freckles=float(rng.uniform(0.2, 1.0)) if melanin < 0.35 and rng.random() < 0.3 else 0.0,
        blush=float(rng.uniform(0.0, 0.12)),
        texture_offset=(float(rng.uniform(0, 256)), float(rng.uniform(0, 256))),
        moles=moles,
        lip_colour=lip_colour,
        eye_colour=eye_colour,
        iris_offset=(float(rng.uniform(0, 256)), float(rng.uniform(0, 256))),
        hair_style=style,
        hair_colour=hair_colour,
        hair_volume=float(rng.uniform(0.0, 1.0)),
        hairline=float(rng.uniform(28, 40) + (8 * rng.uniform() if masc > 0.6 else 0)),
        hair_part=_normal(rng, 10),
        hair_length=float(rng.uniform(0.4, 1.0)),
        brow_colour=brow_colour,
        beard=beard,
        beard_density=float(rng.uniform(0.4, 1.0)),
        glasses=glasses,
        frame_colour=frame_colour,
        lens_tint=tuple(float(c) for c in rng.uniform(0.75, 1.0, 3)),
        proportions=tuple(
            (_normal(rng, _PROPORTION_SD), _normal(rng, _PROPORTION_SD)) for _ in PROPORTION_POINTS
        ),
        relief=tuple(
            tuple(float(v) for v in row)
            for row in np.clip(rng.normal(0, 1, (_RELIEF_PRIMITIVES, 6)), -2.5, 2.5)
            * np.array(_RELIEF_SD)
        ),
    )


def sample_variation(rng: np.random.Generator) -> Variation:
    """Draw one photograph's conditions: near-frontal pose, expression, lighting, background,
    alignment error. Extreme poses are a degradation, not part of this."""
    temperature = rng.uniform(-1, 1)  # warm (tungsten) to cool (shade)
    light = np.array([1.0, 0.95, 0.88]) + temperature * np.array([0.1, 0.0, -0.14])
    kind = _pick(rng, _BACKGROUNDS, [1, 1.2, 1])
    colours = tuple(tuple(float(c) for c in rng.uniform(0.05, 0.95, 3)) for _ in range(2))
    return Variation(
        yaw=_normal(rng, 11.0, 2.3),
        pitch=_normal(rng, 6.0, 2.5),
        roll=_normal(rng, 6.0, 2.0),
        smile=float(rng.uniform()) if rng.random() < 0.55 else 0.0,
        mouth_open=float(rng.uniform()) if rng.random() < 0.3 else 0.0,
        brow_raise=_normal(rng, 0.4),
        eye_open=float(rng.uniform(0.25, 0.8)) if rng.random() < 0.1 else 1 + _normal(rng, 0.08),
        gaze=(_normal(rng, 0.1), _normal(rng, 0.07)),
        light_azimuth=float(rng.uniform(-75, 75)),
        light_elevation=float(rng.uniform(0, 55)),  # key light from above, as photos are lit
        light_colour=tuple(float(c) for c in light),
        light_intensity=float(rng.uniform(0.75, 1.25)),
        ambient=float(rng.uniform(0.2, 0.45)),
        background=kind,
        background_colours=colours,
        background_angle=float(rng.uniform(0, 360)),
        background_offset=(float(rng.uniform(0, 256)), float(rng.uniform(0, 256))),
        shift=(_normal(rng, 1.2), _normal(rng, 1.2)),
        scale=1 + _normal(rng, 0.03),
        rotation=_normal(rng, 2.0),
    )


def sample_degradation(name: str, severity: float, rng: np.random.Generator) -> Degradation:
    """Parameters of one degradation at `severity`. The mappings are chosen so that equal
    severities do roughly equal harm, and 1 leaves little identity; random choices
    (direction, kind, seeds) are drawn here so that applying it later is deterministic."""
    s = float(severity)
    params: dict
    if name == "extreme_pose":
        params = {
            "yaw": float(rng.choice([-1, 1]) * (30 + 55 * s)),
            "pitch": float(rng.choice([-1, 1]) * 30 * s * rng.uniform(0.3, 1)),
        }
    elif name == "occlusion":
        params = {
            "kind": _pick(rng, _OCCLUDERS, [1, 1, 1]),
            "coverage": s,
            "colour": [float(c) for c in rng.uniform(0, 1, 3)],
            "position": [float(c) for c in rng.uniform(-1, 1, 2)],
            "seed": int(rng.integers(2**31)),
        }
    elif name == "exposure":  # a gain in linear light: down to 3 %, or up to 8x
        params = {"gain": 1 + 7 * s if rng.random() < 0.5 else 1 - 0.97 * s}
    elif name == "low_contrast":
        params = {"contrast": 1 - 0.97 * s, "level": float(rng.uniform(0.25, 0.8))}
    elif name == "gaussian_blur":
        params = {"sigma": 4.0 * s}
    elif name == "motion_blur":
        params = {"length": 1 + 20 * s, "angle": float(rng.uniform(0, 180))}
    elif name == "downsample":  # a thumbnail, averaged or (cheap scalers) decimated
        params = {
            "size": round(SIZE / (1 + 9 * s)),
            "down": _pick(rng, ("box", "nearest"), [3, 1]),
            "up": _pick(rng, ("bilinear", "bicubic"), [1, 1]),
        }
    elif name == "noise":
        params = {
            "sigma": 60 * s,
            "chroma": float(rng.uniform(0.2, 1)),
            "seed": int(rng.integers(2**31)),
        }
    else:  # jpeg: quality falls fast at first, as artefacts only show below about 50
        # Half the images were a camera's JPEG before, so they are compressed twice.
        first = int(rng.integers(70, 96)) if rng.random() < 0.5 else None
        params = {"quality": round(2 + 93 * (1 - s) ** 2.5), "first_quality": first}
    return Degradation(name, s, params)


@dataclass(frozen=True)
class DegradationPolicy:
    """Which degradations may be used (`enabled`), the chance that an image is degraded at
    all (`probability`), relative weights of mixing 1, 2, 3, ... of them (`mix`), and the
    range each one's severity is drawn from uniformly (`severity`).

    The default leaves a fifth of the images clean and draws severities uniformly, so
    overall severity spreads over the whole of [0, 1] with a good share near zero."""

    enabled: tuple[str, ...] = DEGRADATIONS
    probability: float = 0.8
    mix: tuple[float, ...] = (0.6, 0.3, 0.1)
    severity: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        _check_names(self.enabled)
        if len(set(self.enabled)) != len(self.enabled):
            raise ValueError(f"degradations are listed twice: {self.enabled}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {self.probability}")
        if not self.mix or min(self.mix) < 0 or sum(self.mix) <= 0:
            raise ValueError(f"mix must be non-negative weights with a positive sum: {self.mix}")
        low, high = self.severity
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"severity range must satisfy 0 <= low <= high <= 1: {self.severity}")

    @classmethod
    def from_names(cls, names: Iterable[str], **kwargs) -> DegradationPolicy:
        """A policy restricted to `names` (other fields as in `DegradationPolicy`)."""
        return cls(enabled=tuple(names), **kwargs)

    @classmethod
    def none(cls) -> DegradationPolicy:
        """Clean data: nothing is ever degraded."""
        return cls(enabled=(), probability=0.0)

    def sample(self, rng: np.random.Generator) -> tuple[Degradation, ...]:
        """The degradations for one image, in application order."""
        if not self.enabled or rng.random() >= self.probability:
            return ()
        count = 1 + _index(rng, self.mix[: len(self.enabled)])
        picked = rng.choice(len(self.enabled), size=count, replace=False)
        names = sorted((self.enabled[i] for i in picked), key=DEGRADATIONS.index)
        return tuple(sample_degradation(name, rng.uniform(*self.severity), rng) for name in names)


def _check_names(names: Iterable[str]) -> None:
    unknown = [name for name in names if name not in DEGRADATIONS]
    if unknown:
        raise ValueError(
            f"unknown degradation {unknown[0]!r}; valid ones are: {', '.join(DEGRADATIONS)}"
        )
