"""The values a synthetic face is made from, and the constants of its crop.

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
rotation that a real aligner leaves. A `Degradation` takes identity information away from
the photograph, and a `SynthImage` is the finished image with every parameter behind it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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

# Where an identity's proportions move the face's outline in the aligned crop (forehead,
# temples, cheeks, jaw, chin), in pixels; the five landmarks stay where they are.
PROPORTION_POINTS = np.array(
    [[56, 20], [22, 40], [90, 40], [20, 78], [92, 78], [34, 104], [78, 104], [56, 114]],
    dtype=float,
)


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


@dataclass
class SynthImage:
    """A generated image, its identity label and every parameter behind it."""

    identity: str
    image: np.ndarray
    metadata: dict
