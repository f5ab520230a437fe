"""What each pixel sees after ray casting (position, normal, material), and what its depth
buffer gives: skin normals smoothed where ellipsoids meet, ambient occlusion, cast shadows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.synth.geometry import Camera, Features
from pipeline.synth.pixels import PIXELS_X, PIXELS_Y
from pipeline.synth.scene import BACKGROUND, FRAME, SKIN, Scene, quadrics, raycast
from pipeline.synth.types import SIZE, Identity


@dataclass(frozen=True)
class Surface:
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


def surface(scene: Scene, cam: Camera, idt: Identity, feat: Features) -> Surface:
    """Ray-cast the scene and describe the nearest hit of every pixel."""
    a, c, half = quadrics(scene, cam)
    depth, index = raycast(scene, cam, idt, feat, a, c, half)
    mask = index >= 0
    depth = np.where(mask, depth, np.float32(0))
    # Tables get one extra row for the background, which index -1 reads.
    material = np.take(np.array([*scene.materials, BACKGROUND]), index)
    r = (cam.rotation / cam.scale).tolist()
    qx, qy = PIXELS_X - float(cam.offset[0]), PIXELS_Y - float(cam.offset[1])
    x, y, z = (r[0][i] * qx + r[1][i] * qy + r[2][i] * depth for i in range(3))
    # The outward normal at q is A^T A (q - C).
    gram = np.einsum("pji,pjk->pik", a, a).reshape(-1, 9)
    gram = np.concatenate([gram, np.zeros((1, 9))]).T.astype(np.float32)
    centres = np.concatenate([c, np.zeros((1, 3))]).T.astype(np.float32)
    g = np.take(gram, index, axis=1)
    cx, cy, cz = np.take(centres, index, axis=1)
    rx, ry, rz = PIXELS_X - cx, PIXELS_Y - cy, depth - cz
    normals = np.stack([g[i] * rx + g[i + 1] * ry + g[i + 2] * rz for i in (0, 3, 6)])
    normals /= np.sqrt((normals * normals).sum(0)) + np.float32(1e-9)
    return Surface(depth, index, mask, material, x, y, z, normals)


def box_sum(image: np.ndarray, radius: int) -> np.ndarray:
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


def smooth_normals_and_occlusion(surf: Surface) -> tuple[np.ndarray, np.ndarray]:
    """Two local averages over a 5x5 window, computed together:

    - skin normals averaged over skin, which softens the creases where ellipsoids meet as
      real soft tissue would (other materials keep theirs);
    - ambient occlusion: a pixel deeper than its neighbourhood (eye sockets, beside the nose,
      under the lips) gets less light."""
    skin = (surf.material == SKIN).astype(np.float32)
    weight = surf.mask.astype(np.float32)
    stacked = np.concatenate([surf.normals * skin, np.stack([skin, surf.depth, weight])])
    summed = box_sum(stacked, 2)
    smooth = summed[:3] / np.maximum(summed[3], np.float32(1e-6))
    smooth /= np.sqrt((smooth * smooth).sum(0)) + np.float32(1e-6)
    normals = surf.normals + skin * (smooth - surf.normals)
    mean = summed[4] / np.maximum(summed[5], np.float32(1))
    occlusion = 1 - np.clip((mean - surf.depth) * np.float32(0.07), 0, 0.45) * weight
    return normals, occlusion


def cast_shadow(surf: Surface, key: np.ndarray, steps: int = 8, step: float = 1.5):
    """Shadows cast by the nose, brows, lips and hair: march a few pixels towards the light
    over the depth buffer; the surface is shadowed where it rises above the ray."""
    planar = math.hypot(key[0], key[1])
    if planar < 0.05:  # light from the camera: no visible shadows
        return np.float32(1)
    rise = step * key[2] / planar  # height the ray gains per step, in pixels
    reach = math.ceil(steps * step) + 1
    # Thin glasses frames would cast distracting streaks; they cast nothing here.
    padded = np.full((SIZE + 2 * reach, SIZE + 2 * reach), -1e4, dtype=np.float32)
    casters = surf.mask & (surf.material != FRAME)
    padded[reach:-reach, reach:-reach] = surf.depth + (~casters) * np.float32(-1e4)
    highest = np.full((SIZE, SIZE), -1e4, dtype=np.float32)
    ux, uy = key[0] / planar, key[1] / planar
    for k in range(1, steps + 1):
        ox, oy = round(k * step * ux), round(k * step * uy)
        sample = padded[reach + oy : reach + oy + SIZE, reach + ox : reach + ox + SIZE]
        np.maximum(highest, sample - k * rise, out=highest)
    shadow = np.clip((highest - surf.depth - 1.0) * np.float32(0.4), 0, 1)
    return 1 - box_sum(shadow, 1) * np.float32(0.8 / 9)
