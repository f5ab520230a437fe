"""Synthetic labelled faces: the data every later stage trains, scores and evaluates on.

A face is a small 3D scene of about 25 ellipsoids in an object space measured in pixels of
the canonical 112x112 ArcFace crop: x to the image right, y down, z towards the camera, the
origin midway between the eyes. An `Identity` is the set of numbers that shape and colour that
scene (cranium, brow ridge, midface with cheekbones and cheeks, jaw, chin, muzzle, neck;
eyeballs behind almond-shaped lid openings cut into the skin; nose bridge, tip and wings;
lips; ears; a hair cap cut at a ragged hairline, with long-hair, curl or bun volumes;
optional full beard and glasses) plus the skin, hair and eye colours and the offsets into a
shared noise table that give each person their own skin blotches, pores, freckles and iris
pattern. A per-person relief moves and reshapes the face's ellipsoids, and per-person
proportions displace the outline of the rendered crop smoothly. Features without much relief
(lips, brows, lashes and lid creases, nostrils, moles, stubble, moustache, goatee, age lines)
are painted on the surface in object coordinates, so they follow the head as it turns.
The spreads were tuned until a real FR model (dlib's, docs/evaluation.md) tells identities
apart, while an identity's own images vary only by pose, expression and light.

A `Variation` is one photograph of that person: head pose, expression (smile, open mouth,
raised brows, eye openness, gaze), light and background, and the small shift, scale and
rotation that a real aligner leaves. The scene is rotated by the pose and placed by the
similarity transform that maps its projected eyes, nose tip and mouth corners onto the
ArcFace 5-point template (as a real pipeline aligns detected landmarks), then ray-cast
orthographically: each ellipsoid's front intersection is a closed-form quadratic in the
pixel coordinates, a z-buffer keeps the nearest, skin normals are smoothed where ellipsoids
meet, and the hits are shaded in a gamma-2 linear space with a wrapped Lambert key light,
shadows cast along the depth buffer, a fill light, ambient occlusion from the depth buffer
and Blinn-Phong highlights. Everything is vectorised numpy over pixel boxes.

Degradations then take identity information away with a continuous severity in [0, 1]:
`extreme_pose` changes the pose before rendering; occlusion, exposure, contrast, blurs,
resampling, sensor noise and JPEG act on the pixels, in that (camera) order. A
`DegradationPolicy` decides which are used, how often and how many at once; the image's
overall severity is 1 - prod(1 - s_i) over the applied ones.

`generate` ties it together deterministically: the identity comes from an RNG keyed by
(seed, split, identity index) only, the image from one keyed by all four, so any image can be
made on its own (parallel shards) and train and eval identities never coincide.
"""

from __future__ import annotations

import bisect
import functools
import io
import itertools
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
from PIL import Image, ImageFilter

SIZE = 112
# ArcFace's 5-point template for a 112x112 crop: eyes, nose tip, mouth corners (x, y).
TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)
SPLITS = {"train": 1, "eval": 2}
# In the order they are applied: pose before rendering, then scene, optics, sensor, codec.
DEGRADATIONS = (
    "extreme_pose",
    "occlusion",
    "exposure",
    "low_contrast",
    "gaussian_blur",
    "motion_blur",
    "downsample",
    "noise",
    "jpeg",
)
# What can be done to a finished photo: all but extreme_pose, which acts before rendering.
PIXEL_DEGRADATIONS = DEGRADATIONS[1:]

# RNG key tags: SeedSequence ignores trailing zeros, so a bare [seed, split, identity] key
# would equal [seed, split, identity, 0]; a non-zero tag keeps the two streams apart.
_IDENTITY_TAG, _IMAGE_TAG = 1, 2

_GRID = np.arange(SIZE, dtype=np.float32)
_PIXELS_X, _PIXELS_Y = np.meshgrid(_GRID, _GRID)
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

# Materials, and their specular strength, shininess and diffuse wrap (soft skin light).
# The last entry is the background, so that tables read at primitive index -1 give it.
_SKIN, _HAIR, _EYE, _SOCKET, _FRAME, _BACKGROUND = range(6)
_SPECULAR = np.array([0.10, 0.07, 0.9, 0.0, 0.5, 0.0], dtype=np.float32)
_SHININESS = np.array([18.0, 8.0, 150.0, 1.0, 60.0, 1.0], dtype=np.float32)
_WRAP = np.array([0.25, 0.2, 0.1, 0.0, 0.0, 0.0], dtype=np.float32)
# Clip kinds: shell primitives have the eye openings cut out, the hair cap stops at the
# hairline, a glasses rim is the outer ring of its lens, a full beard leaves the mouth free.
_NO_CLIP, _SHELL, _HAIRLINE, _RIM, _BEARD = range(5)

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


@dataclass(frozen=True)
class Identity:
    """One person: shape multipliers (1 = average), offsets in canonical pixels, colours as
    sRGB in [0, 1], and categorical styles."""

    masculinity: float
    age: float
    head_width: float
    head_length: float
    jaw_width: float
    chin_width: float
    chin_length: float
    cheekbones: float
    cheek_fullness: float
    brow_ridge: float
    eye_spacing: float
    eye_width: float
    eye_height: float
    eye_tilt: float
    eye_depth: float
    brow_height: float
    brow_thickness: float
    brow_arch: float
    brow_length: float
    brow_slope: float
    nose_length: float
    nose_width: float
    nose_projection: float
    nose_bridge: float
    nose_tip: float
    mouth_width: float
    mouth_height: float
    upper_lip: float
    lower_lip: float
    ear_size: float
    ear_angle: float
    skin_colour: tuple[float, float, float]
    skin_texture: float
    blotchiness: float
    freckles: float
    blush: float
    texture_offset: tuple[float, float]
    moles: tuple[tuple[float, float, float], ...]
    lip_colour: tuple[float, float, float]
    eye_colour: tuple[float, float, float]
    iris_offset: tuple[float, float]
    hair_style: str
    hair_colour: tuple[float, float, float]
    hair_volume: float
    hairline: float
    hair_part: float
    hair_length: float
    brow_colour: tuple[float, float, float]
    beard: str
    beard_density: float
    glasses: str
    frame_colour: tuple[float, float, float]
    lens_tint: tuple[float, float, float]
    relief: tuple[tuple[float, ...], ...]
    proportions: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Variation:
    """One photograph of a person: pose (degrees), expression, light, background and the
    residual alignment error (pixels, scale factor, degrees)."""

    yaw: float
    pitch: float
    roll: float
    smile: float
    mouth_open: float
    brow_raise: float
    eye_open: float
    gaze: tuple[float, float]
    light_azimuth: float
    light_elevation: float
    light_colour: tuple[float, float, float]
    light_intensity: float
    ambient: float
    background: str
    background_colours: tuple[tuple[float, float, float], tuple[float, float, float]]
    background_angle: float
    background_offset: tuple[float, float]
    shift: tuple[float, float]
    scale: float
    rotation: float


@dataclass(frozen=True)
class Degradation:
    """One applied degradation: its name, severity in [0, 1] and the parameters it was given
    (all that is needed to apply it again identically)."""

    name: str
    severity: float
    params: dict = field(default_factory=dict)


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


@dataclass
class SynthImage:
    """A generated image, its identity label and every parameter behind it."""

    identity: str
    image: np.ndarray
    metadata: dict


def _check_names(names: Iterable[str]) -> None:
    unknown = [name for name in names if name not in DEGRADATIONS]
    if unknown:
        raise ValueError(
            f"unknown degradation {unknown[0]!r}; valid ones are: {', '.join(DEGRADATIONS)}"
        )


# --- sampling -------------------------------------------------------------------------------

# Shape traits spread this many times their adult anthropometric spreads (the sds written in
# `sample_identity`): real faces also differ in fine detail that this renderer leaves out, and
# at 1x dlib's FR model (docs/evaluation.md) finds too many look-alikes among our identities.
_IDENTITY_SPREAD = 1.5


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
            (_normal(rng, _PROPORTION_SD), _normal(rng, _PROPORTION_SD)) for _ in _PROPORTION_POINTS
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


# --- geometry -------------------------------------------------------------------------------


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation (degrees) about y (yaw), then x (pitch), then the view axis (roll)."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


@dataclass(frozen=True)
class _Features:
    """Geometry derived from an identity and its expression, shared by the scene, the
    painted details and the landmarks."""

    eye_x: float
    eye_z: float
    eye_r: float
    lid_w: float
    lid_up: float
    lid_low: float
    tilt: float
    nose_y: float
    nose_z: float
    nose_r: float
    mouth_y: float
    mouth_w: float
    mouth_z: float
    lift: float
    gap: float
    jaw_drop: float


_EYE_RADIUS = 7.2
# Where an identity's proportions move the face's outline in the aligned crop (forehead,
# temples, cheeks, jaw, chin), in pixels; the five landmarks stay where they are.
_PROPORTION_POINTS = np.array(
    [[56, 20], [22, 40], [90, 40], [20, 78], [92, 78], [34, 104], [78, 104], [56, 114]],
    dtype=float,
)
_PROPORTION_SD, _PROPORTION_REACH, _PROPORTION_CELL = 3.0, 16.0, 14
# The face's skin primitives after the cranium (which the hair cap follows) are moved by up
# to 5% of their radii and scaled by up to 8% per axis (one standard deviation).
_RELIEF_PRIMITIVES = 14
_RELIEF_SD = (0.05, 0.05, 0.05, 0.08, 0.08, 0.08)


def _features(idt: Identity, var: Variation) -> _Features:
    openness = max(var.eye_open - 0.25 * var.smile, 0.05)
    mouth_w = 14.6 * idt.mouth_width * (1 + 0.1 * var.smile)
    gap = 8.0 * var.mouth_open
    return _Features(
        eye_x=17.6 * idt.eye_spacing,
        eye_z=-3.5 - 1.5 * idt.eye_depth,
        eye_r=_EYE_RADIUS,
        lid_w=8.2 * idt.eye_width,
        lid_up=3.7 * idt.eye_height * openness,
        lid_low=2.5 * idt.eye_height * min(openness, 1.0),
        tilt=math.radians(idt.eye_tilt),
        nose_y=20.1 * idt.nose_length,
        nose_z=13.0 * idt.nose_projection + 1.0,
        nose_r=5.2 * idt.nose_tip,
        mouth_y=40.7 * idt.mouth_height,
        mouth_w=mouth_w,
        mouth_z=2.5,
        lift=3.0 * var.smile,
        gap=gap,
        jaw_drop=0.6 * gap,
    )


def _object_landmarks(feat: _Features) -> np.ndarray:
    """The 5 points in object space: eye (pupil) centres, nose tip, mouth corners."""
    eye_front = feat.eye_z + feat.eye_r
    corner_y = feat.mouth_y - feat.lift + 0.3 * feat.gap
    return np.array(
        [
            [-feat.eye_x, 0.0, eye_front],
            [feat.eye_x, 0.0, eye_front],
            [0.0, feat.nose_y, feat.nose_z + feat.nose_r],
            [-feat.mouth_w, corner_y, feat.mouth_z],
            [feat.mouth_w, corner_y, feat.mouth_z],
        ]
    )


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Least-squares similarity dst ~ [[a, -b], [b, a]] @ src + t (as face aligners do)."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    p, q = src - src_mean, dst - dst_mean
    norm = (p**2).sum()
    a = (p * q).sum() / norm
    b = (p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]).sum() / norm
    t = dst_mean - np.array([[a, -b], [b, a]]) @ src_mean
    return a, b, t


@dataclass(frozen=True)
class _Camera:
    """Object -> pixel: q = scale * rotation @ p + (tx, ty, 0); q_z is depth (larger nearer)."""

    scale: float
    rotation: np.ndarray
    offset: np.ndarray

    @functools.cached_property
    def rows(self) -> list[list[float]]:
        """The first two rows of `rotation` as Python floats, for cheap scalar maths."""
        return self.rotation[:2].tolist()


def _camera(feat: _Features, var: Variation) -> _Camera:
    pose = _rotation(var.yaw, var.pitch, var.roll)
    projected = (_object_landmarks(feat) @ pose.T)[:, :2]
    a, b, t = similarity(projected, TEMPLATE)
    # Residual alignment error: rotate and scale about the crop centre, then shift.
    centre = np.array([SIZE / 2, SIZE / 2])
    jitter = np.radians(var.rotation)
    angle = math.atan2(b, a) + jitter
    scale = math.hypot(a, b) * var.scale
    rot2 = np.array([[math.cos(jitter), -math.sin(jitter)], [math.sin(jitter), math.cos(jitter)]])
    offset = var.scale * rot2 @ (t - centre) + centre + np.array(var.shift)
    roll = np.array(
        [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]]
    )
    return _Camera(float(scale), roll @ pose, np.array([offset[0], offset[1], 0.0]))


def landmarks(identity: Identity, variation: Variation) -> np.ndarray:
    """Pixel positions (5, 2) where the eyes, nose tip and mouth corners were rendered."""
    feat = _features(identity, variation)
    return _projected_landmarks(feat, _camera(feat, variation))


def _projected_landmarks(feat: _Features, cam: _Camera) -> np.ndarray:
    points = cam.scale * _object_landmarks(feat) @ cam.rotation.T + cam.offset
    return points[:, :2]


# --- scene ----------------------------------------------------------------------------------


class _Scene:
    """Ellipsoids in object space: centre, semi-axes, local frame (columns), material, clip."""

    def __init__(self) -> None:
        self.centres: list = []
        self.radii: list = []
        self.frames: list = []
        self.materials: list[int] = []
        self.clips: list[int] = []

    def add(self, centre, radii, material: int, clip: int = _NO_CLIP, frame=None) -> None:
        self.centres.append(centre)
        self.radii.append(radii)
        self.frames.append(np.eye(3) if frame is None else frame)
        self.materials.append(material)
        self.clips.append(clip)

    def segment(self, start, end, width: float, depth: float, material: int, clip=_NO_CLIP):
        """An ellipsoid stretched from `start` to `end`."""
        start, end = np.asarray(start, float), np.asarray(end, float)
        axis = end - start
        length = np.linalg.norm(axis)
        y = axis / length
        x = np.array([1.0, 0, 0]) if abs(y[0]) < 0.9 else np.array([0, 0, 1.0])
        x = x - (x @ y) * y
        x /= np.linalg.norm(x)
        frame = np.stack([x, y, np.cross(x, y)], axis=1)
        self.add((start + end) / 2, (width, length / 2, depth), material, clip, frame)


def _scene(idt: Identity, var: Variation, feat: _Features) -> _Scene:
    """The face's ellipsoids. Proportions follow an adult head (about 15 cm wide, 19 deep,
    23 from chin to crown) at the template's scale of 5.6 pixels per centimetre."""
    scene = _Scene()
    w, length, jaw = idt.head_width, idt.head_length, idt.jaw_width
    drop = feat.jaw_drop
    cranium_c, cranium_r = (0, -10 * length, -42), np.array([42 * w, 58 * length, 52])
    scene.add(cranium_c, cranium_r, _SKIN, _SHELL)
    ridge = 2.5 * idt.brow_ridge  # the brow ridge overhangs the eyes, more in men
    scene.add((0, -9.5, -21 + ridge), (33 * w, 7.5, 30), _SKIN, _SHELL)
    # Midface: prominent cheekbones widen it high up, full cheeks widen it lower down.
    full, bone = 2.5 * idt.cheek_fullness, 2.5 * idt.cheekbones
    scene.add((0, 16 - bone, -32), (35 * w + bone, 36, 40 + full), _SKIN, _SHELL)
    for side in (-1, 1):
        ear = idt.ear_size
        frame = _rotation(side * (15 + 20 * idt.ear_angle), 0, 0)
        scene.add((side * 41 * w, 6, -44), (4.5, 12.5 * ear, 8.5 * ear), _SKIN, frame=frame)
    # Jaw and chin drop when the mouth opens; the muzzle carries the lips forward.
    scene.add((0, 28 * length + drop * 0.5, -35), (34 * jaw + full, 33 * length, 40), _SKIN)
    chin_y = 53 * length * idt.chin_length + drop
    scene.add((0, chin_y, -13), (12 * idt.chin_width, 8.5, 12), _SKIN)
    scene.add((0, 33, -10), (17, 15, 15), _SKIN)
    scene.add((0, 68, -46), (23 * jaw, 40, 24), _SKIN)  # neck
    # Lips follow the painted mouth: the upper stays, the lower moves with the jaw.
    scene.add((0, feat.mouth_y - 3.2, -2), (12.5 * idt.mouth_width, 3.6, 8), _SKIN)
    scene.add((0, feat.mouth_y + 3.8 + drop, -3), (11 * idt.mouth_width, 4.2, 8), _SKIN)
    # Nose: bridge from between the eyes to the tip, the tip, and the two wings.
    tip_y, tip_z = feat.nose_y - 1, feat.nose_z
    scene.segment((0, -2, 5), (0, tip_y - 1, tip_z - 1), 4.2 * idt.nose_bridge, 4.5, _SKIN)
    scene.add((0, tip_y, tip_z), (feat.nose_r * 1.05, feat.nose_r * 0.92, feat.nose_r), _SKIN)
    for side in (-1, 1):
        wing = (side * 6.3 * idt.nose_width, tip_y + 1.2, tip_z - 6)
        scene.add(wing, (4.0 * idt.nose_width, 3.6, 4.6), _SKIN)
        # An eyeball behind each lid opening, and a socket that fills the opening's corners.
        eye = (side * feat.eye_x, 0.0, feat.eye_z)
        scene.add(eye, (feat.eye_r,) * 3, _EYE)
        scene.add((eye[0], 0.3, feat.eye_z - 1), (feat.lid_w + 1.5, 6.0, 4.0), _SOCKET)
    _apply_relief(scene, idt)
    _hair(scene, idt, cranium_c, cranium_r)
    if idt.beard == "full":
        scene.add((0, 42, -24), (38 * jaw, 24, 37 + 2 * idt.beard_density), _HAIR, _BEARD)
    if idt.glasses != "none":
        _glasses(scene, idt, feat)
    return scene


def _apply_relief(scene: _Scene, idt: Identity) -> None:
    """Move and reshape the face's skin primitives (all but the cranium) by the identity's
    relief: the shape detail that the named proportions leave out."""
    skin = [k for k in range(1, len(scene.centres)) if scene.materials[k] == _SKIN]
    for k, row in zip(skin, idt.relief, strict=True):
        radii = np.asarray(scene.radii[k], float)
        scene.centres[k] = np.asarray(scene.centres[k], float) + radii * np.array(row[:3])
        scene.radii[k] = radii * np.exp(row[3:])


def _hair(scene: _Scene, idt: Identity, centre, radii: np.ndarray) -> None:
    """A cap over the cranium cut at the hairline (thin for a buzz cut, thick for curls),
    plus a back volume and side curtains for long hair, or a bun."""
    style = idt.hair_style
    if style == "bald":
        return
    thickness = {"buzz": 0.8, "curly": 9 + 8 * idt.hair_volume}.get(style, 2 + 5 * idt.hair_volume)
    scene.add(centre, radii + thickness, _HAIR, _HAIRLINE)
    if style == "long":
        drop = 40 * idt.hair_length
        scene.add((0, 10 + drop / 2, -62), (48 * idt.head_width, 50 + drop / 2, 26), _HAIR)
        for side in (-1, 1):
            start = (side * 39 * idt.head_width, -30, -26)
            end = (side * 42 * idt.head_width, 30 + drop, -38)
            scene.segment(start, end, 11, 22, _HAIR)
    elif style == "bun":
        scene.add((0, -58, -75), (17, 15, 15), _HAIR)


def _glasses(scene: _Scene, idt: Identity, feat: _Features) -> None:
    """Rims (thin lens-shaped ellipsoids of which only the outer ring is kept), a bridge and
    temples back to the ears; the glass itself is a tint applied after shading (`_lenses`)."""
    size = 1.12 if idt.glasses == "round" else 1.0
    z = 13.0
    for side in (-1, 1):
        scene.add((side * feat.eye_x, 0.5, z), (10.5 * size, 8.5 * size, 1.0), _FRAME, _RIM)
        hinge = (side * (feat.eye_x + 10.2 * size), -1.0, z - 1)
        scene.segment(hinge, (side * 41 * idt.head_width, 1.0, -40), 1.0, 1.0, _FRAME)
    scene.segment((-feat.eye_x + 9, -1.5, z), (feat.eye_x - 9, -1.5, z), 1.2, 1.0, _FRAME)


def _lens_inner(idt: Identity) -> float:
    """Where the rim ends and the glass begins, in normalised lens radius."""
    return 0.84 if idt.glasses == "round" else 0.82


# --- ray casting ----------------------------------------------------------------------------


def _quadrics(scene: _Scene, cam: _Camera):
    """Per primitive, the matrix A with |A (q - C)| = 1 on its surface (q in pixel space),
    its centre C and the half-extents of its bounding box."""
    frames = np.stack(scene.frames)  # (P, 3, 3), columns are local axes in object space
    radii = np.asarray(scene.radii, dtype=np.float64)
    centres = np.asarray(scene.centres, dtype=np.float64)
    world = cam.rotation @ frames  # local axes in world space
    a = np.transpose(world, (0, 2, 1)) / (cam.scale * radii[:, :, None])
    c = cam.scale * centres @ cam.rotation.T + cam.offset
    half_extent = cam.scale * np.linalg.norm(world * radii[:, None, :], axis=2)
    return a, c, half_extent


def _ray_terms(a: np.ndarray, c: np.ndarray) -> dict[str, np.ndarray]:
    """Separable pieces of each primitive's front hit. For the ray through pixel (x, y), at
    offset d = (dx, dy) from the centre, |A (q - C)| = 1 is a quadratic in depth whose
    larger root is z = cz + (sqrt(d' M d + aa) - b . d) / aa. Expanded, that is
    sqrt(cols_q[x] + rows_q[y] + rows_m[y] * dx) + cols_l[x] + rows_l[y]: tables of shape
    (P, S), so the per-primitive loop only adds slices."""
    axy, az = a[:, :, :2], a[:, :, 2]
    aa = (az * az).sum(1)
    b = np.einsum("pij,pi->pj", axy, az) / aa[:, None]
    m = b[:, :, None] * b[:, None, :] - np.einsum("pij,pik->pjk", axy, axy) / aa[:, None, None]
    dx = _GRID[None, :] - c[:, :1]
    dy = _GRID[None, :] - c[:, 1:2]
    terms = {
        "dx": dx,
        "dy": dy,
        "cols_q": m[:, :1, 0] * dx * dx,
        "rows_q": m[:, 1:, 1] * dy * dy + 1 / aa[:, None],
        "rows_m": 2 * m[:, 1:, 0] * dy,
        "cols_l": -b[:, :1] * dx,
        "rows_l": -b[:, 1:] * dy + c[:, 2:],
    }
    return {name: value.astype(np.float32) for name, value in terms.items()}


def _eye_openings(feat: _Features, cam: _Camera) -> np.ndarray:
    """Pixels looking through the lid openings, found where each pixel's ray meets the plane
    of the eye surface (z = eye front) in object space."""
    r = cam.rotation
    hole = np.zeros((SIZE, SIZE), bool)
    if r[2, 2] <= 0.05 or abs(np.linalg.det(r[:2, :2])) < 1e-3:  # plane edge-on or behind
        return hole
    z = feat.eye_z + feat.eye_r + 1.0
    inv = np.linalg.inv(r[:2, :2]).tolist()
    tx, ty = float(cam.offset[0]), float(cam.offset[1])
    for side in (-1, 1):
        margin = feat.lid_w + 2
        box = _pixel_box(
            cam, (side * feat.eye_x - margin, -margin, z), (side * feat.eye_x + margin, margin, z)
        )
        if box is None:
            continue
        y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
        px = ((_GRID[x0:x1] - tx) / cam.scale - float(r[0, 2]) * z)[None, :]
        py = ((_GRID[y0:y1] - ty) / cam.scale - float(r[1, 2]) * z)[:, None]
        x = inv[0][0] * px + inv[0][1] * py - side * feat.eye_x
        y = inv[1][0] * px + inv[1][1] * py
        u, v = _eye_local(x, y, side * feat.tilt)
        hole[y0:y1, x0:x1] |= _lid_inside(u, v, feat)
    return hole


def _pixel_box(cam: _Camera, low, high):
    """Pixel slices (rows, columns) covering an object-space box, or None when that is off
    the image."""
    cx, cy, cz = ((a + b) / 2 for a, b in zip(low, high, strict=True))
    hx, hy, hz = ((b - a) / 2 for a, b in zip(low, high, strict=True))
    spans = []
    for (r0, r1, r2), offset in zip(cam.rows, cam.offset.tolist(), strict=False):
        mid = cam.scale * (r0 * cx + r1 * cy + r2 * cz) + offset
        reach = cam.scale * (abs(r0) * hx + abs(r1) * hy + abs(r2) * hz) + 1
        spans.append((max(int(mid - reach), 0), min(int(mid + reach) + 2, SIZE)))
    (x0, x1), (y0, y1) = spans
    return (slice(y0, y1), slice(x0, x1)) if x0 < x1 and y0 < y1 else None


def _eye_local(dx, dy, tilt):
    """Coordinates along and across an eye tilted by `tilt` (outer corner up for > 0)."""
    c, s = np.cos(tilt), np.sin(tilt)
    return c * dx - s * dy, s * dx + c * dy


def _lid_arcs(feat: _Features) -> tuple[float, float, float, float]:
    """Centres (v) and radii of the two circles whose intersection is the almond opening."""
    w2 = feat.lid_w**2
    up, low = feat.lid_up, feat.lid_low
    centre_up = (w2 - up**2) / (2 * up)
    centre_low = -(w2 - low**2) / (2 * low)
    return centre_up, centre_up + up, centre_low, -centre_low + low


def _lid_inside(u, v, feat: _Features):
    cu, ru, cl, rl = _lid_arcs(feat)
    return (u * u + (v - cu) ** 2 < ru * ru) & (u * u + (v - cl) ** 2 < rl * rl)


def _raycast(scene: _Scene, cam: _Camera, idt: Identity, feat: _Features, a, c, half):
    """Depth (larger is nearer) and primitive index (-1: background) of every pixel."""
    t = _ray_terms(a, c)
    boxes = np.stack([c[:, 0] - half[:, 0], c[:, 0] + half[:, 0] + 2, c[:, 1] - half[:, 1]], 1)
    boxes = np.concatenate([boxes, (c[:, 1] + half[:, 1] + 2)[:, None]], 1)
    boxes = np.clip(boxes, 0, SIZE).astype(int).tolist()
    depth = np.full((SIZE, SIZE), -np.inf, dtype=np.float32)
    index = np.full((SIZE, SIZE), -1, dtype=np.int32)
    openings = _eye_openings(feat, cam)
    with np.errstate(invalid="ignore"):  # rays that miss take the root of a negative: NaN
        for k, clip in enumerate(scene.clips):
            x0, x1, y0, y1 = boxes[k]
            if x0 >= x1 or y0 >= y1:
                continue
            dx = t["dx"][k, x0:x1]
            z = t["rows_m"][k, y0:y1, None] * dx
            z += t["cols_q"][k, x0:x1]
            z += t["rows_q"][k, y0:y1, None]
            np.sqrt(z, out=z)
            z += t["cols_l"][k, x0:x1]
            z += t["rows_l"][k, y0:y1, None]
            win = z > depth[y0:y1, x0:x1]
            if clip == _SHELL:
                win &= ~openings[y0:y1, x0:x1]
            elif clip == _RIM:
                dz = z - np.float32(c[k, 2])
                win &= _rim_radius(a[k], dx, t["dy"][k, y0:y1], dz, idt) > _lens_inner(idt)
            elif clip == _HAIRLINE:
                win &= _hairline_keep(*_to_object(cam, x0, x1, y0, y1, z), idt)
            elif clip == _BEARD:
                win &= _beard_keep(*_to_object(cam, x0, x1, y0, y1, z)[:2], feat)
            np.copyto(depth[y0:y1, x0:x1], z, where=win)
            np.copyto(index[y0:y1, x0:x1], k, where=win)
    return depth, index


def _to_object(cam: _Camera, x0: int, x1: int, y0: int, y1: int, z):
    """Object coordinates of the points at depth `z` over the pixel box [y0:y1, x0:x1]."""
    r = (cam.rotation / cam.scale).tolist()
    qx = (_GRID[x0:x1] - float(cam.offset[0]))[None, :]
    qy = (_GRID[y0:y1] - float(cam.offset[1]))[:, None]
    return tuple(r[0][i] * qx + r[1][i] * qy + r[2][i] * z for i in range(3))


def _rim_radius(a: np.ndarray, dx, dy, dz, idt: Identity):
    """Normalised radius on a lens, from its local coordinates A (q - C)."""
    (uxx, uxy, uxz), (uyx, uyy, uyz) = a[:2].tolist()
    u = (uxx * dx)[None, :] + (uxy * dy)[:, None] + uxz * dz
    v = (uyx * dx)[None, :] + (uyy * dy)[:, None] + uyz * dz
    return _lens_radius(u, v, idt)


def _lens_radius(u, v, idt: Identity):
    """Round frames are circles in lens coordinates, square ones a superellipse."""
    if idt.glasses == "round":
        return np.sqrt(u * u + v * v)
    u2, v2 = u * u, v * v
    return np.sqrt(np.sqrt(u2 * u2 + v2 * v2))


def _hairline_keep(x, y, z, idt: Identity):
    """Where the hair cap is kept: above a hairline that is high on the forehead, drops to
    the sideburns at the temples and to the nape at the back."""
    front = -idt.hairline if idt.hair_style != "fringe" else -15.0 - 4 * idt.hair_volume
    side = {"long": 20.0, "curly": 10.0}.get(idt.hair_style, -2.0)
    nape = {"long": 60.0, "curly": 35.0}.get(idt.hair_style, 28.0)
    temples = np.clip((np.abs(x) - 16 * idt.head_width) / (22 * idt.head_width), 0, 1)
    back = np.clip((-z - 42) / 28, 0, 1)
    line = front + (side - front) * temples * np.sqrt(temples) + (nape - side) * back
    if idt.hair_style != "fringe":  # the parting lifts the line where it runs
        line += 2.5 * np.exp(-(((x - idt.hair_part) / 4) ** 2))
    # A ragged edge of strands rather than a cut line.
    line += 3.0 * (_noise(x * 0.8, z * 0.1, 1.2, idt.texture_offset) - 0.5)
    return y < line


def _beard_keep(x, y, feat: _Features):
    """A full beard covers the jaw below the cheeks, leaving the lips free."""
    mouth = (x / (feat.mouth_w + 2)) ** 2 + ((y - feat.mouth_y - feat.jaw_drop / 2) / 6.5) ** 2
    return (y > 22 + 0.008 * x * x) & (mouth > 1)


# --- surfaces -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Surface:
    """What each pixel sees: depth (0 on background), primitive index (-1: background),
    material, object-space position (x, y, z) and world normal (3, S, S). Arrays are
    channel-first: numpy is slow on broadcasts over a trailing axis of length 3."""

    depth: np.ndarray
    index: np.ndarray
    mask: np.ndarray
    material: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    normals: np.ndarray


def _surface(scene: _Scene, cam: _Camera, idt: Identity, feat: _Features) -> _Surface:
    """Ray-cast the scene and describe the nearest hit of every pixel."""
    a, c, half = _quadrics(scene, cam)
    depth, index = _raycast(scene, cam, idt, feat, a, c, half)
    mask = index >= 0
    depth = np.where(mask, depth, np.float32(0))
    # Tables get one extra row for the background, which index -1 reads.
    material = np.take(np.array([*scene.materials, _BACKGROUND]), index)
    r = (cam.rotation / cam.scale).tolist()
    qx, qy = _PIXELS_X - float(cam.offset[0]), _PIXELS_Y - float(cam.offset[1])
    x, y, z = (r[0][i] * qx + r[1][i] * qy + r[2][i] * depth for i in range(3))
    # The outward normal at q is A^T A (q - C).
    gram = np.einsum("pji,pjk->pik", a, a).reshape(-1, 9)
    gram = np.concatenate([gram, np.zeros((1, 9))]).T.astype(np.float32)
    centres = np.concatenate([c, np.zeros((1, 3))]).T.astype(np.float32)
    g = np.take(gram, index, axis=1)
    cx, cy, cz = np.take(centres, index, axis=1)
    rx, ry, rz = _PIXELS_X - cx, _PIXELS_Y - cy, depth - cz
    normals = np.stack([g[i] * rx + g[i + 1] * ry + g[i + 2] * rz for i in (0, 3, 6)])
    normals /= np.sqrt((normals * normals).sum(0)) + np.float32(1e-9)
    return _Surface(depth, index, mask, material, x, y, z, normals)


def _box_sum(image: np.ndarray, radius: int) -> np.ndarray:
    """Sum over a (2r + 1)^2 window on the last two axes, zero padded."""
    padded = np.zeros((*image.shape[:-2], SIZE + 2 * radius, SIZE + 2 * radius), np.float32)
    padded[..., radius : radius + SIZE, radius : radius + SIZE] = image
    rows = padded[..., :SIZE, :].copy()
    for i in range(1, 2 * radius + 1):
        rows += padded[..., i : i + SIZE, :]
    out = rows[..., :SIZE].copy()
    for j in range(1, 2 * radius + 1):
        out += rows[..., j : j + SIZE]
    return out


def _smooth_normals_and_occlusion(surf: _Surface) -> tuple[np.ndarray, np.ndarray]:
    """Two local averages over a 5x5 window, computed together:

    - skin normals averaged over skin, which softens the creases where ellipsoids meet as
      real soft tissue would (other materials keep theirs);
    - ambient occlusion: a pixel deeper than its neighbourhood (eye sockets, beside the nose,
      under the lips) gets less light."""
    skin = (surf.material == _SKIN).astype(np.float32)
    weight = surf.mask.astype(np.float32)
    stacked = np.concatenate([surf.normals * skin, np.stack([skin, surf.depth, weight])])
    summed = _box_sum(stacked, 2)
    smooth = summed[:3] / np.maximum(summed[3], np.float32(1e-6))
    smooth /= np.sqrt((smooth * smooth).sum(0)) + np.float32(1e-6)
    normals = surf.normals + skin * (smooth - surf.normals)
    mean = summed[4] / np.maximum(summed[5], np.float32(1))
    occlusion = 1 - np.clip((mean - surf.depth) * np.float32(0.07), 0, 0.45) * weight
    return normals, occlusion


def _cast_shadow(surf: _Surface, key: np.ndarray, steps: int = 8, step: float = 1.5):
    """Shadows cast by the nose, brows, lips and hair: march a few pixels towards the light
    over the depth buffer; the surface is shadowed where it rises above the ray."""
    planar = math.hypot(key[0], key[1])
    if planar < 0.05:  # light from the camera: no visible shadows
        return np.float32(1)
    rise = step * key[2] / planar  # height the ray gains per step, in pixels
    reach = math.ceil(steps * step) + 1
    # Thin glasses frames would cast distracting streaks; they cast nothing here.
    padded = np.full((SIZE + 2 * reach, SIZE + 2 * reach), -1e4, dtype=np.float32)
    casters = surf.mask & (surf.material != _FRAME)
    padded[reach:-reach, reach:-reach] = surf.depth + (~casters) * np.float32(-1e4)
    highest = np.full((SIZE, SIZE), -1e4, dtype=np.float32)
    ux, uy = key[0] / planar, key[1] / planar
    for k in range(1, steps + 1):
        ox, oy = round(k * step * ux), round(k * step * uy)
        sample = padded[reach + oy : reach + oy + SIZE, reach + ox : reach + ox + SIZE]
        np.maximum(highest, sample - k * rise, out=highest)
    shadow = np.clip((highest - surf.depth - 1.0) * np.float32(0.4), 0, 1)
    return 1 - _box_sum(shadow, 1) * np.float32(0.8 / 9)


# --- painting -------------------------------------------------------------------------------


def _noise(x, y, cell: float, offset) -> np.ndarray:
    """Smooth noise in [0, 1] with blobs about `cell` units across at points (x, y), read
    from the shared table at `offset` (one identity's patch of it)."""
    k = _NOISE_TEXELS / cell
    ix = (x * k + offset[0] * _NOISE_TEXELS).astype(np.int32) & (_NOISE_SIZE - 1)
    iy = (y * k + offset[1] * _NOISE_TEXELS).astype(np.int32) & (_NOISE_SIZE - 1)
    return np.take(_NOISE, iy * _NOISE_SIZE + ix)


def _smoothstep(edge0: float, edge1: float, x):
    # minimum/maximum rather than np.clip: much less overhead on the small boxes used here.
    t = np.minimum(np.maximum((x - edge0) * (1 / (edge1 - edge0)), 0.0), 1.0)
    return t * t * (3 - 2 * t)


def _mix(colour: np.ndarray, target, alpha) -> None:
    """colour += alpha * (target - colour), in place; alpha broadcasts over channels."""
    target = target if isinstance(target, np.ndarray) else _rgb(target)
    colour += np.asarray(alpha, dtype=np.float32) * (target - colour)


def _rgb(values) -> np.ndarray:
    """A colour shaped (3, 1, 1) to broadcast over channel-first images."""
    return np.asarray(values, dtype=np.float32).reshape(3, 1, 1)


def _albedo(idt: Identity, var: Variation, feat: _Features, surf: _Surface, cam: _Camera):
    """Surface colour (sRGB, 0-1) of every pixel that sees the face."""
    albedo = _paint_skin(surf, idt, var, feat, cam)
    material = surf.material
    if idt.hair_style != "bald" or idt.beard == "full":
        _mix(albedo, _paint_hair(surf, idt), material == _HAIR)
    _paint_eyes(albedo, surf, idt, var, feat, cam)
    socket = _rgb([0.45, 0.30, 0.28]) * _rgb(idt.skin_colour) ** 0.5
    _mix(albedo, socket, material == _SOCKET)
    if idt.glasses != "none":
        _mix(albedo, idt.frame_colour, material == _FRAME)
    return albedo


def _paint_skin(surf: _Surface, idt: Identity, var: Variation, feat: _Features, cam: _Camera):
    """Skin tone with blotches and pores everywhere; the details each in the pixel box of
    their object-space region, so that small features cost little."""
    x, y, z = surf.x, surf.y, surf.z
    off = idt.texture_offset
    blotch = _noise(x, y, 7.0, off) - 0.5
    pores = _noise(x, y + 0.37 * z, 0.9, (off[1], off[0])) - 0.5
    colour = _rgb(idt.skin_colour) * (
        1 + (2 * idt.blotchiness) * blotch + (2 * idt.skin_texture) * pores
    )
    regions = [
        (_paint_blush, (-40, 4, -16), (40, 34, 25)),
        (_paint_eye_surrounds, (-feat.eye_x - 14, -9, -12), (feat.eye_x + 14, 9, 15)),
        (_paint_brows, (-30, -24, -12), (30, -3, 20)),
        (_paint_mouth, (-feat.mouth_w - 4, feat.nose_y - 1, -12), (feat.mouth_w + 4, 52, 28)),
    ]
    if idt.freckles:
        regions.append((_paint_freckles, (-36, -6, -16), (36, 34, 25)))
    for mole in idt.moles:
        mx, my, mr = mole
        paint = functools.partial(_paint_mole, mole)
        regions.append((paint, (mx - mr - 1, my - mr - 1, -16), (mx + mr + 1, my + mr + 1, 25)))
    if idt.beard != "none":
        regions.append((_paint_beard, (-45, feat.nose_y, -45), (45, 68, 25)))
    if idt.age > 0.1:
        regions.append((_paint_age, (-40, -36, -14), (40, feat.mouth_y + 12, 30)))
    for paint, low, high in regions:
        box = _pixel_box(cam, low, high)
        if box is not None:
            paint(colour[:, box[0], box[1]], x[box], y[box], z[box], idt, var, feat)
    return np.clip(colour, 0.0, 1.0)


def _paint_blush(colour, x, y, z, idt: Identity, var: Variation, feat: _Features):
    """Warmer (less green and blue) cheeks and nose."""
    cheeks = np.exp(-(((np.abs(x) - 22) * (1 / 9)) ** 2 + ((y - 20) * (1 / 8)) ** 2))
    nose = np.exp(-((x * 0.2) ** 2 + ((y - feat.nose_y) * (1 / 6)) ** 2))
    colour[1:] *= 1 - idt.blush * (cheeks + 0.6 * nose) * (z > -16)


def _paint_freckles(colour, x, y, z, idt: Identity, var: Variation, feat: _Features):
    off = idt.texture_offset
    spots = _noise(x, y, 1.6, (off[0] + 71, off[1] + 13)) > 0.78
    area = np.exp(-(((np.abs(x) - 12) * (1 / 18)) ** 2 + ((y - 14) * (1 / 12)) ** 2))
    colour *= 1 - (0.25 * idt.freckles) * spots * area * (z > -16)


def _paint_mole(mole, colour, x, y, z, idt: Identity, var: Variation, feat: _Features):
    mx, my, mr = mole
    mole_alpha = _smoothstep(mr + 0.4, mr - 0.4, np.hypot(x - mx, y - my)) * (z > -16)
    _mix(colour, _rgb(idt.skin_colour) * 0.35, mole_alpha * 0.8)


def _paint_age(colour, x, y, z, idt: Identity, var: Variation, feat: _Features):
    """Lines that deepen with age: nasolabial folds from the nose wings to beyond the mouth
    corners (deeper in a smile), forehead lines, crow's feet and the lower-lid crease."""
    ax = np.abs(x)
    top, bottom = feat.nose_y - 3, feat.mouth_y + 9
    t = np.clip((y - top) * (1 / (bottom - top)), 0, 1)
    wing = 6.3 * idt.nose_width + 4
    fold_x = wing + (feat.mouth_w + 3 - wing) * t + 2.5 * np.sin(np.pi * t)
    fold = np.exp(-(((ax - fold_x) * (1 / 1.3)) ** 2)) * _smoothstep(0, 0.15, t)
    fold *= _smoothstep(1, 0.8, t) * (0.6 + 0.6 * var.smile)
    wave = 0.8 * np.sin(x * (1 / 9) + idt.texture_offset[0])
    forehead = sum(np.exp(-(((y + 20 + 5.5 * k - wave) * (1 / 0.7)) ** 2)) for k in range(3))
    forehead *= _smoothstep(26, 14, ax) * (0.6 + 0.6 * max(var.brow_raise, 0))
    dx, dy = ax - feat.eye_x - feat.lid_w - 2.5, y - 1
    crows = np.exp(-((dy - 0.5 * dx * np.sign(dy)) ** 2) * 0.8) * (dx > 0) * _smoothstep(7, 3, dx)
    side = np.where(x < 0, np.float32(-1), np.float32(1))
    u, v = _eye_local(x - side * feat.eye_x, y, side * feat.tilt)
    bags = np.exp(-(((v - feat.lid_low - 3.5) * (1 / 0.9)) ** 2)) * _smoothstep(9, 4, np.abs(u))
    lines = 0.4 * fold + 0.18 * forehead + 0.2 * crows + 0.25 * bags
    colour *= 1 - idt.age * np.clip(lines, 0, 0.8) * (z > -14)


def _paint_eye_surrounds(colour, x, y, z, idt: Identity, var: Variation, feat: _Features):
    """Lash line along the upper lid, a softer lower lid line, the lid crease and a little
    darkening of the socket."""
    side = np.where(x < 0, np.float32(-1), np.float32(1))
    u, v = _eye_local(x - side * feat.eye_x, y, side * feat.tilt)
    cu, ru, cl, rl = _lid_arcs(feat)
    d_up = np.sqrt(u * u + (v - cu) ** 2) - ru  # > 0 outside the upper arc
    d_low = np.sqrt(u * u + (v - cl) ** 2) - rl
    along = _smoothstep(feat.lid_w + 1.0, feat.lid_w - 2.5, np.abs(u)) * (z > -12)
    lashes = _smoothstep(1.7, 0.4, d_up) * (d_low < 0.8) * along
    lower = _smoothstep(1.0, 0.0, d_low) * (d_up < 0) * along * 0.3
    crease = np.exp(-(((d_up - 3.4) * (1 / 0.9)) ** 2)) * (v < 0) * along * 0.2
    socket = np.exp(-((u * (1 / (feat.lid_w + 4))) ** 2 + ((v + 1) * (1 / 6)) ** 2)) * 0.12
    _mix(
        colour, _rgb(idt.brow_colour) * 0.45, np.clip(lashes * 0.9 + lower + crease + socket, 0, 1)
    )


def _paint_brows(colour, x, y, z, idt: Identity, var: Variation, feat: _Features):
    u = (np.abs(x) - 4.0) * (1 / (20.0 * idt.brow_length))
    uc = np.clip(u, 0, 1)
    arch = np.sin(np.pi * np.sqrt(uc) * uc**0.3)
    centre = -(10.5 * idt.brow_height + 3.0 * var.brow_raise) - 3.0 * idt.brow_arch * arch
    centre = centre + idt.brow_slope * uc
    half = 1.6 * idt.brow_thickness * (1.15 - 0.65 * uc)
    inside = _smoothstep(-0.05, 0.08, u) * _smoothstep(1.05, 0.9, u)
    band = _smoothstep(half + 0.6, half - 0.6, np.abs(y - centre)) * inside * (z > -12)
    strands = 0.75 + 0.5 * _noise(x * 0.5, y * 3.0, 1.0, idt.texture_offset)
    _mix(colour, idt.brow_colour, np.clip(band * strands, 0, 1) * 0.92)


def _paint_mouth(colour, x, y, z, idt: Identity, var: Variation, feat: _Features):
    """Nostrils, and lips around a mouth line whose corners rise with a smile; when the
    mouth opens, a dark gap with the upper teeth tapers towards the corners."""
    front = z > -12
    for side in (-1, 1):
        d = ((x - side * 3.6 * idt.nose_width) * (1 / 2.2)) ** 2
        d = d + ((y - feat.nose_y - 3.0) * (1 / 1.2)) ** 2
        colour *= 1 - 0.7 * _smoothstep(1.3, 0.6, d) * front
    t = np.clip(x * (1 / feat.mouth_w), -1.2, 1.2)
    line = feat.mouth_y - feat.lift * t * t
    edge = np.sqrt(np.clip(1 - t * t, 0, 1))
    gap = feat.gap * edge
    upper_bottom, lower_top = line - 0.35 * gap, line + 0.65 * gap
    bow = 1.0 + 0.35 * np.exp(-(((np.abs(x) - 3.5) * (1 / 3)) ** 2))
    bow -= 0.2 * np.exp(-((x * (1 / 1.5)) ** 2))
    upper = (3.4 * idt.upper_lip) * bow * np.sqrt(edge)
    lower = (4.6 * idt.lower_lip) * edge**0.7
    in_upper = _smoothstep(-0.7, 0.7, y - (upper_bottom - upper))
    in_upper *= _smoothstep(0.7, -0.7, y - upper_bottom)
    in_lower = _smoothstep(-0.7, 0.7, y - lower_top) * _smoothstep(0.7, -0.7, y - lower_top - lower)
    lips = np.clip(in_upper + in_lower, 0, 1) * (np.abs(t) < 1.05) * front
    _mix(colour, idt.lip_colour, lips * 0.9)
    if feat.gap > 0.5:
        opening = _smoothstep(-0.5, 0.5, y - upper_bottom) * _smoothstep(0.5, -0.5, y - lower_top)
        opening *= (np.abs(t) < 1) * front
        teeth = _smoothstep(0.5, -0.5, y - upper_bottom - 0.45 * gap) * (np.abs(t) < 0.8)
        inside = _rgb([0.75, 0.72, 0.66]) * (teeth * edge) + _rgb([0.14, 0.04, 0.04])
        _mix(colour, inside, opening)
    else:
        crease = np.exp(-(((y - line) * (1 / 0.6)) ** 2)) * (np.abs(t) < 1.02) * front
        colour *= 1 - 0.55 * crease


def _paint_beard(colour, x, y, z, idt: Identity, var: Variation, feat: _Features) -> None:
    """Facial hair painted over the skin: a moustache above the upper lip (its ends drooping),
    a goatee on the chin, or stubble / a full beard over the jaw up to the cheek line."""
    w = feat.mouth_w
    t = np.minimum(np.abs(x) * (1 / w), 1.3)
    lip_top = feat.mouth_y - 3.6 - feat.lift * t * t + 2.0 * t * t
    thick = 3.5 + 2.5 * idt.beard_density
    moustache = _smoothstep(lip_top - thick - 0.8, lip_top - thick + 0.8, y)
    moustache *= _smoothstep(lip_top + 1.0, lip_top - 0.3, y) * _smoothstep(
        w + 2.5, w - 0.5, np.abs(x)
    )
    lower_lip = feat.mouth_y + feat.jaw_drop + 4.5
    if idt.beard == "moustache":
        region = moustache
    elif idt.beard == "goatee":
        d = (x * (1 / (0.55 * w + 2))) ** 2 + ((y - lower_lip - 8) * (1 / 10)) ** 2
        region = np.maximum(moustache, _smoothstep(1.15, 0.85, d))
    else:
        cheek_line = 17 + 0.012 * x * x
        region = np.maximum(moustache, _smoothstep(cheek_line, cheek_line + 6, y) * (z > -40))
    mouth_y = feat.mouth_y + feat.jaw_drop / 2
    lips = (x * (1 / (w + 0.5))) ** 2 + ((y - mouth_y) * (1 / (4.2 + feat.gap))) ** 2
    region = region * _smoothstep(0.85, 1.1, lips) * (z > -45)
    strength = 0.4 if idt.beard == "stubble" else 0.85
    grain = _noise(x * 1.3, y * 1.3, 0.8, idt.texture_offset)
    alpha = region * np.clip(strength * idt.beard_density * (0.6 + 0.8 * grain), 0, 1)
    _mix(colour, _rgb(idt.hair_colour) * 0.85, alpha)


def _paint_hair(surf: _Surface, idt: Identity) -> np.ndarray:
    """Strands that run away from the crown; curls are a coarser isotropic texture."""
    x, y, z = surf.x, surf.y, surf.z
    if idt.hair_style == "curly":
        grain = _noise(x + 0.3 * z, y, 2.2, idt.texture_offset)
    else:
        angle = np.arctan2(x - idt.hair_part * 0.5, y + 30)
        radius = np.sqrt(x * x + (y + 60) ** 2 + (z + 40) ** 2)
        grain = _noise(angle * 60, radius * 0.12, 1.0, idt.texture_offset)
    colour = _rgb(idt.hair_colour) * (0.7 + 0.6 * grain)
    if idt.hair_style == "buzz":
        colour = 0.55 * colour + 0.45 * _rgb(idt.skin_colour)
    if idt.hair_style in ("short", "long", "bun"):
        part = np.exp(-(((x - idt.hair_part) * (1 / 0.9)) ** 2)) * (y < -30) * (z > -30)
        colour *= 1 - 0.35 * part
    return np.clip(colour, 0, 1)


def _paint_eyes(albedo, surf: _Surface, idt: Identity, var: Variation, feat, cam) -> None:
    """Sclera, iris (the identity's colour and pattern, a darker limbal ring) and pupil,
    placed by the angle from the gaze direction; the upper lid shades the top. Both eyes
    are painted in one box, each pixel relative to the eyeball on its side."""
    r = feat.eye_r
    low, high = (-feat.eye_x - r, -r, feat.eye_z), (feat.eye_x + r, r, feat.eye_z + r)
    box = _pixel_box(cam, low, high)
    if box is None:
        return
    x = surf.x[box]
    side = np.where(x < 0, np.float32(-1), np.float32(1))
    dx = (x - side * feat.eye_x) * (1 / r)
    dy = surf.y[box] * (1 / r)
    dz = (surf.z[box] - feat.eye_z) * (1 / r)
    gaze = np.array([var.gaze[0], var.gaze[1], 1.0])
    gx, gy, gz = (gaze / np.linalg.norm(gaze)).tolist()
    radial = np.arccos(np.clip(dx * gx + dy * gy + dz * gz, -1, 1))
    around = np.arctan2(dy, dx * side)
    pattern = 0.65 + 0.7 * _noise(around * 20, radial * 30, 1.0, idt.iris_offset)
    iris = _rgb(idt.eye_colour) * (pattern * (1 - 0.55 * _smoothstep(0.4, 0.56, radial)))
    sclera = _rgb([0.86, 0.83, 0.80]) * (1 - 0.3 * np.clip(np.abs(dx) - 0.3, 0, 1))
    colour = sclera + (radial < 0.56) * (iris - sclera)
    colour *= 1 - (radial < 0.21) * np.float32(0.97)
    colour *= 1 - 0.5 * _smoothstep(0.2, -0.6, dy)
    _mix(albedo[:, box[0], box[1]], colour, surf.material[box] == _EYE)


# --- lighting -------------------------------------------------------------------------------


def _shade(albedo, normals, occlusion, surf: _Surface, var: Variation) -> np.ndarray:
    """Linear light: a wrapped Lambert key light (with cast shadows), a weak fill from the
    other side and sky ambient, all attenuated by ambient occlusion, plus Blinn-Phong
    highlights. Lights stay fixed to the camera while the head turns."""
    az, el = math.radians(var.light_azimuth), math.radians(var.light_elevation)
    key = np.array([math.sin(az) * math.cos(el), -math.sin(el), math.cos(az) * math.cos(el)])
    fill = np.array([-key[0], 0.2, abs(key[2]) + 0.5])
    fill /= np.linalg.norm(fill)
    half = key + np.array([0.0, 0.0, 1.0])
    half /= np.linalg.norm(half)
    nx, ny, nz = normals
    kx, ky, kz = key.tolist()
    n_key = nx * kx + ny * ky + nz * kz
    wrap = np.take(_WRAP, surf.material)
    diffuse = np.clip((n_key + wrap) / (1 + wrap), 0, 1)
    fx, fy, fz = fill.tolist()
    diffuse += 0.18 * np.clip(nx * fx + ny * fy + nz * fz, 0, 1)
    hx, hy, hz = half.tolist()
    n_half = np.clip(nx * hx + ny * hy + nz * hz, 0, 1)
    spec = np.take(_SPECULAR, surf.material) * n_half ** np.take(_SHININESS, surf.material)
    diffuse *= _cast_shadow(surf, key)
    sky = var.ambient * (0.75 - 0.25 * ny)  # more light from above
    light = _rgb(var.light_colour) * var.light_intensity
    irradiance = sky * occlusion + (diffuse * occlusion) * light
    return albedo * albedo * irradiance + (spec * (n_key > 0)) * light


def _background(var: Variation) -> np.ndarray:
    """Linear-light background: a flat wall, a gradient, or soft blotches."""
    c0, c1 = _rgb(var.background_colours[0]), _rgb(var.background_colours[1])
    if var.background == "flat":
        return np.broadcast_to(c0 * c0 * 0.8, (3, SIZE, SIZE))
    if var.background == "gradient":
        angle = math.radians(var.background_angle)
        t = (math.cos(angle) * (_PIXELS_X - 56) + math.sin(angle) * (_PIXELS_Y - 56)) / 112 + 0.5
    else:
        t = _noise(_PIXELS_X, _PIXELS_Y, 18.0, var.background_offset)
    srgb = c0 + np.clip(t, 0, 1) * (c1 - c0)
    return srgb * srgb * 0.8


def render(identity: Identity, variation: Variation) -> np.ndarray:
    """The aligned 112x112 RGB uint8 crop of `identity` photographed under `variation`."""
    feat = _features(identity, variation)
    return _render(identity, variation, feat, _camera(feat, variation))


def _render(identity: Identity, variation: Variation, feat: _Features, cam: _Camera):
    scene = _scene(identity, variation, feat)
    surf = _surface(scene, cam, identity, feat)
    normals, occlusion = _smooth_normals_and_occlusion(surf)
    albedo = _albedo(identity, variation, feat, surf, cam)
    shaded = _shade(albedo, normals, occlusion, surf, variation)
    image = _background(variation)
    image = image + surf.mask * (shaded - image)
    _lenses(image, scene, cam, identity, surf)
    image = _soften_edges(np.sqrt(np.clip(image, 0, 1)), surf.index)
    image = (image * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0).copy()
    return _reproportion(image, identity, _projected_landmarks(feat, cam))


def _reproportion(image: np.ndarray, idt: Identity, points: np.ndarray) -> np.ndarray:
    """Move the crop's content by the identity's proportions: a smooth (Gaussian radial
    basis) displacement that interpolates its offsets at `_PROPORTION_POINTS`, placed on the
    rendered face by the landmarks, and none at the landmarks themselves. Fixed per identity,
    it changes the outline as real faces differ, beyond what the ellipsoids' numbers do."""
    a, b, t = similarity(TEMPLATE, points)
    to_crop = np.array([[a, -b], [b, a]])
    anchors = np.concatenate([_PROPORTION_POINTS @ to_crop.T + t, points])
    moves = np.concatenate([np.array(idt.proportions) @ to_crop.T, np.zeros((5, 2))])
    scale = -1 / (2 * _PROPORTION_REACH**2)
    weights = np.linalg.solve(
        np.exp(scale * ((anchors[:, None] - anchors[None]) ** 2).sum(-1)), moves
    )
    # The field is smooth, so Pillow's mesh transform (one bilinear quad per cell) follows it:
    # each output cell reads from its corners moved back by the field.
    corners = np.arange(0, SIZE + 1, _PROPORTION_CELL, dtype=np.float64)
    profile = np.exp(scale * (corners[None] - anchors[:, :, None]) ** 2)  # (anchor, x|y, corner)
    field = np.einsum("ky,kx,kc->yxc", profile[:, 1], profile[:, 0], weights)
    # Read from an edge-padded copy, so that what moves in at the border is not black.
    pad = 8
    source = np.stack(np.meshgrid(corners, corners), -1) - field + pad  # (y, x, 2)
    mesh = []
    for i in range(len(corners) - 1):
        for j in range(len(corners) - 1):
            box = tuple(int(v) for v in (corners[j], corners[i], corners[j + 1], corners[i + 1]))
            quad = np.concatenate(  # north-west, south-west, south-east, north-east
                [source[i, j], source[i + 1, j], source[i + 1, j + 1], source[i, j + 1]]
            )
            mesh.append((box, tuple(quad.tolist())))
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    moved = Image.fromarray(padded).transform(
        (SIZE, SIZE), Image.Transform.MESH, mesh, Image.Resampling.BILINEAR
    )
    return np.asarray(moved)


def _lenses(image, scene: _Scene, cam: _Camera, idt: Identity, surf: _Surface) -> None:
    """Glasses lenses: a tint and a faint sheen over whatever is behind the rims."""
    if idt.glasses == "none":
        return
    a, c, _ = _quadrics(scene, cam)
    tint = _rgb(idt.lens_tint)
    for k in (k for k, clip in enumerate(scene.clips) if clip == _RIM):
        (uxx, uxy, _), (uyx, uyy, _) = a[k][:2].tolist()
        dx, dy = _PIXELS_X - float(c[k, 0]), _PIXELS_Y - float(c[k, 1])
        u, v = uxx * dx + uxy * dy, uyx * dx + uyy * dy  # thin lens: its mid-plane will do
        inside = (_lens_radius(u, v, idt) < _lens_inner(idt)) & (
            (c[k, 2] > surf.depth) | ~surf.mask
        )
        sheen = 0.04 * np.clip(1 - np.abs(u + v) * 2, 0, 1)
        image += inside * (image * (tint - 1) + sheen)


def _soften_edges(image: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Anti-alias silhouettes and primitive seams: blend pixels whose neighbours belong to
    another primitive with their 3x3 mean."""
    edge = np.zeros_like(index, dtype=bool)
    across = index[:, 1:] != index[:, :-1]
    edge[:, 1:] |= across
    edge[:, :-1] |= across
    down = index[1:] != index[:-1]
    edge[1:] |= down
    edge[:-1] |= down
    mean = _box_sum(image, 1) * np.float32(1 / 9)
    return image + (edge * np.float32(0.5)) * (mean - image)


# --- degradations ---------------------------------------------------------------------------


def apply_pose(variation: Variation, degradations: Iterable[Degradation]) -> Variation:
    """The variation with any `extreme_pose` degradation applied (before rendering)."""
    for d in degradations:
        if d.name == "extreme_pose":
            variation = replace(
                variation, yaw=d.params["yaw"], pitch=variation.pitch + d.params["pitch"]
            )
    return variation


def degrade(
    image: np.ndarray, degradations: Iterable[Degradation], points: np.ndarray | None = None
) -> np.ndarray:
    """Apply the pixel-level degradations to a uint8 (S, S, 3) image in camera order.
    `points` are its five landmarks, where occluders go (default: the template, right for
    any aligned crop). `extreme_pose` is skipped: it acts before rendering (`apply_pose`)."""
    points = TEMPLATE if points is None else points
    for d in sorted(degradations, key=lambda d: DEGRADATIONS.index(d.name)):
        if d.name != "extreme_pose":
            image = _APPLY[d.name](image, d.params, points)
    return image


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _gaussian_blur(image: np.ndarray, params: dict, points: np.ndarray) -> np.ndarray:
    if params["sigma"] <= 0:
        return image
    blurred = Image.fromarray(image).filter(ImageFilter.GaussianBlur(params["sigma"]))
    return np.asarray(blurred)


def _motion_blur(image: np.ndarray, params: dict, points: np.ndarray) -> np.ndarray:
    length = params["length"]
    taps = max(round(length), 1)
    angle = math.radians(params["angle"])
    steps = np.linspace(-(length - 1) / 2, (length - 1) / 2, taps)
    offsets = {(round(t * math.cos(angle)), round(t * math.sin(angle))) for t in steps}
    pad = math.ceil(length / 2) + 1
    padded = np.pad(image.astype(np.float32), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    acc = np.zeros(image.shape, dtype=np.float32)
    for ox, oy in offsets:
        acc += padded[pad + oy : pad + oy + SIZE, pad + ox : pad + ox + SIZE]
    return _to_uint8(acc / len(offsets))


def _downsample(image: np.ndarray, params: dict, points: np.ndarray) -> np.ndarray:
    size = params["size"]
    if size >= SIZE:
        return image
    up = Image.Resampling.BICUBIC if params["up"] == "bicubic" else Image.Resampling.BILINEAR
    down = Image.Resampling.NEAREST if params["down"] == "nearest" else Image.Resampling.BOX
    small = Image.fromarray(image).resize((size, size), down)
    return np.asarray(small.resize((SIZE, SIZE), up))


def _noise_degradation(image: np.ndarray, params: dict, points: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(params["seed"])
    x = image.astype(np.float32)
    # Read noise plus shot noise that grows with brightness; part of it shared by channels.
    sigma = params["sigma"] * (0.5 + 0.5 * np.sqrt(x / 255))
    chroma = params["chroma"]
    luma = rng.standard_normal((SIZE, SIZE, 1), dtype=np.float32)
    colour = rng.standard_normal((SIZE, SIZE, 3), dtype=np.float32)
    mixed = (1 - chroma) * luma + chroma * colour
    mixed /= math.sqrt((1 - chroma) ** 2 + chroma**2)
    return _to_uint8(x + sigma * mixed)


def _jpeg(image: np.ndarray, params: dict, points: np.ndarray) -> np.ndarray:
    """libjpeg through Pillow (4:2:0 chroma, as cameras and web encoders store faces), after
    an earlier compression at `first_quality` when there was one."""
    for quality in (params["first_quality"], params["quality"]):
        if quality is not None:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
            image = np.asarray(Image.open(buffer).convert("RGB"))
    return image


def _exposure(image: np.ndarray, params: dict, points: np.ndarray) -> np.ndarray:
    linear = (image.astype(np.float32) / 255) ** 2 * params["gain"]
    return _to_uint8(np.sqrt(np.clip(linear, 0, 1)) * 255)


def _low_contrast(image: np.ndarray, params: dict, points: np.ndarray) -> np.ndarray:
    level = params["level"] * 255
    return _to_uint8(level + params["contrast"] * (image.astype(np.float32) - level))


def _occlusion(image: np.ndarray, params: dict, points: np.ndarray) -> np.ndarray:
    """Something in front of the face, placed on its landmarks; `coverage` in [0, 1] sets how
    much of the face it hides."""
    out = image.astype(np.float32)
    colour = np.asarray(params["colour"], dtype=np.float32) * 255
    occluder = {"sunglasses": _sunglasses, "mask": _face_mask, "patch": _patch}[params["kind"]]
    alpha, fill = occluder(colour, params, points)
    return _to_uint8(out + alpha[..., None] * (fill - out))


def _sunglasses(colour, params: dict, points: np.ndarray):
    """Two dark lenses on the eyes and a bridge; bigger and more opaque with coverage."""
    coverage = params["coverage"]
    size = 0.65 + 0.65 * coverage
    alpha = np.zeros((SIZE, SIZE), dtype=np.float32)
    for ex, ey in points[:2]:
        d = ((_PIXELS_X - ex) / (10 * size)) ** 2 + ((_PIXELS_Y - ey) / (7.5 * size)) ** 2
        alpha = np.maximum(alpha, _smoothstep(1.05, 0.95, d))
    (lx, ly), (rx, ry) = points[0], points[1]
    bridge = (np.abs(_PIXELS_Y - (ly + ry) / 2 + 3) < 1.2) & (lx < _PIXELS_X) & (rx > _PIXELS_X)
    alpha = np.maximum(alpha, bridge) * (0.75 + 0.25 * coverage)
    # Dark tinted glass with a faint vertical gradient of reflected sky.
    fill = colour * 0.25 + 0.8 * np.clip(ly + 8 - _PIXELS_Y, 0, 16)[..., None]
    return alpha, fill


def _face_mask(colour, params: dict, points: np.ndarray):
    """A pleated face mask from the chin up to below the mouth (coverage 0) or up to the eyes
    (coverage 1)."""
    nose, mouth = points[2], points[3:].mean(0)
    top = mouth[1] - 7 - params["coverage"] * (mouth[1] - nose[1] + 14)
    left, right = points[3, 0] - 16, points[4, 0] + 16
    span = np.clip((_PIXELS_X - left) / (right - left), 0, 1)
    edge = top + 10 * (2 * span - 1) ** 2  # higher over the nose
    alpha = ((edge < _PIXELS_Y) & (left < _PIXELS_X) & (right > _PIXELS_X)).astype(np.float32)
    pleats = 1 + 0.08 * np.sin((_PIXELS_Y - top) * 0.9)
    return alpha, (colour * 0.5 + 110) * pleats[..., None]


def _patch(colour, params: dict, points: np.ndarray):
    """A textured square near the face centre covering 4 % (coverage 0) to 44 % of it."""
    side = SIZE * math.sqrt(0.04 + 0.4 * params["coverage"])
    cx, cy = 56 + 22 * params["position"][0], 62 + 22 * params["position"][1]
    inside = (np.abs(_PIXELS_X - cx) < side / 2) & (np.abs(_PIXELS_Y - cy) < side / 2)
    texture = np.random.default_rng(params["seed"]).random((SIZE, SIZE, 1), dtype=np.float32)
    return inside.astype(np.float32), colour * (0.7 + 0.6 * texture)


_APPLY = {
    "occlusion": _occlusion,
    "exposure": _exposure,
    "low_contrast": _low_contrast,
    "gaussian_blur": _gaussian_blur,
    "motion_blur": _motion_blur,
    "downsample": _downsample,
    "noise": _noise_degradation,
    "jpeg": _jpeg,
}


def severity_of(degradations: Iterable[Degradation]) -> float:
    """Overall severity: the chance that at least one degradation 'hits' if each hit with its
    own severity, 1 - prod(1 - s_i); 0 for a clean image."""
    clean = 1.0
    for d in degradations:
        clean *= 1.0 - d.severity
    return 1.0 - clean


# --- generation -----------------------------------------------------------------------------


def _fields(obj) -> dict:
    """A dataclass as a dict of its (JSON-ready: numbers, strings, tuples) fields; shallower
    and much faster than `asdict`, which deep-copies."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _split_code(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return SPLITS[split]


@functools.lru_cache(maxsize=4096)
def _identity(seed: int, split: str, identity_index: int) -> Identity:
    """Identities are drawn once per process: a shard renders many images of each."""
    return sample_identity(identity_rng(seed, split, identity_index))


def identity_rng(seed: int, split: str, identity_index: int) -> np.random.Generator:
    """The RNG that draws identity `identity_index` of `split`: independent of image index."""
    return np.random.default_rng([seed, _split_code(split), identity_index, _IDENTITY_TAG])


def generate(
    identity_index: int,
    image_index: int,
    *,
    seed: int,
    split: str,
    policy: DegradationPolicy | None = None,
) -> SynthImage:
    """Image `image_index` of identity `identity_index` in `split` ("train" or "eval"),
    degraded under `policy` (default `DegradationPolicy()`). Same arguments, same pixels."""
    code = _split_code(split)
    if min(seed, identity_index, image_index) < 0:
        raise ValueError("seed, identity_index and image_index must be non-negative")
    policy = DegradationPolicy() if policy is None else policy
    identity = _identity(seed, split, identity_index)
    rng = np.random.default_rng([seed, code, identity_index, image_index, _IMAGE_TAG])
    variation = sample_variation(rng)
    degradations = policy.sample(rng)
    variation = apply_pose(variation, degradations)
    feat = _features(identity, variation)
    cam = _camera(feat, variation)
    points = _projected_landmarks(feat, cam)
    image = degrade(_render(identity, variation, feat, cam), degradations, points)
    label = f"{split}-{identity_index:06d}"
    metadata = {
        "identity": label,
        "split": split,
        "seed": seed,
        "identity_index": identity_index,
        "image_index": image_index,
        "severity": severity_of(degradations),
        "degradations": [asdict(d) for d in degradations],
        "landmarks": points.round(2).tolist(),
        "identity_params": _fields(identity),
        "variation": _fields(variation),
    }
    return SynthImage(label, image, metadata)


def gallery(
    identities: int,
    variations: int,
    *,
    seed: int,
    split: str = "train",
    policy: DegradationPolicy | None = None,
) -> Image.Image:
    """A grid to look at: one row per identity, one column per image. Without a policy the
    first half of the columns is clean and the rest uses the default policy."""
    sheet = Image.new("RGB", (variations * SIZE, identities * SIZE))
    for row in range(identities):
        for col in range(variations):
            chosen = policy
            if chosen is None:
                clean = col < (variations + 1) // 2
                chosen = DegradationPolicy.none() if clean else DegradationPolicy()
            image = generate(row, col, seed=seed, split=split, policy=chosen).image
            sheet.paste(Image.fromarray(image), (col * SIZE, row * SIZE))
    return sheet
