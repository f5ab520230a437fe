"""Where the face is: the feature positions an identity and its expression give, the head's
rotation, and the camera that aligns the projected landmarks onto the ArcFace template."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from pipeline.synth.types import SIZE, TEMPLATE, Identity, Variation


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation (degrees) about y (yaw), then x (pitch), then the view axis (roll)."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


@dataclass(frozen=True)
class Features:
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


def features(idt: Identity, var: Variation) -> Features:
    openness = max(var.eye_open - 0.25 * var.smile, 0.05)
    mouth_w = 14.6 * idt.mouth_width * (1 + 0.1 * var.smile)
    gap = 8.0 * var.mouth_open
    return Features(
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


def _object_landmarks(feat: Features) -> np.ndarray:
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
class Camera:
    """Object -> pixel: q = scale * rotation @ p + (tx, ty, 0); q_z is depth (larger nearer)."""

    scale: float
    rotation: np.ndarray
    offset: np.ndarray

    @functools.cached_property
    def rows(self) -> list[list[float]]:
        """The first two rows of `rotation` as Python floats, for cheap scalar maths."""
        return self.rotation[:2].tolist()


def camera(feat: Features, var: Variation) -> Camera:
    pose = rotation(var.yaw, var.pitch, var.roll)
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
    return Camera(float(scale), roll @ pose, np.array([offset[0], offset[1], 0.0]))


def landmarks(identity: Identity, variation: Variation) -> np.ndarray:
    """Pixel positions (5, 2) where the eyes, nose tip and mouth corners were rendered."""
    feat = features(identity, variation)
    return projected_landmarks(feat, camera(feat, variation))


def projected_landmarks(feat: Features, cam: Camera) -> np.ndarray:
    points = cam.scale * _object_landmarks(feat) @ cam.rotation.T + cam.offset
    return points[:, :2]
