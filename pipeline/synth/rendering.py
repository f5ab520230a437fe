"""`render`: the aligned crop of an identity under a variation, lit and finished.

The scene (`scene`) is rotated by the pose and placed by the similarity transform that maps
its projected eyes, nose tip and mouth corners onto the ArcFace 5-point template (`geometry`;
as a real pipeline aligns detected landmarks), then ray-cast orthographically, skin normals
are smoothed where ellipsoids meet (`surfaces`), and the hits are painted (`painting`) and
shaded in a gamma-2 linear space with a wrapped Lambert key light, shadows cast along the
depth buffer, a fill light, ambient occlusion from the depth buffer and Blinn-Phong
highlights. Everything is vectorised numpy over pixel boxes.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from pipeline.synth.geometry import (
    Camera,
    Features,
    camera,
    features,
    projected_landmarks,
    similarity,
)
from pipeline.synth.painting import paint, rgb
from pipeline.synth.pixels import PIXELS_X, PIXELS_Y, noise
from pipeline.synth.scene import RIM, Scene, face_scene, lens_inner, lens_radius, quadrics
from pipeline.synth.surfaces import (
    Surface,
    box_sum,
    cast_shadow,
    smooth_normals_and_occlusion,
    surface,
)
from pipeline.synth.types import PROPORTION_POINTS, SIZE, TEMPLATE, Identity, Variation

# Each material's specular strength, shininess and diffuse wrap (soft skin light).
_SPECULAR = np.array([0.10, 0.07, 0.9, 0.0, 0.5, 0.0], dtype=np.float32)
_SHININESS = np.array([18.0, 8.0, 150.0, 1.0, 60.0, 1.0], dtype=np.float32)
_WRAP = np.array([0.25, 0.2, 0.1, 0.0, 0.0, 0.0], dtype=np.float32)
# How far (pixels) each of an identity's proportion offsets reaches, and the mesh cell that
# moves the crop by them.
_PROPORTION_REACH, _PROPORTION_CELL = 16.0, 14


def _shade(albedo, normals, occlusion, surf: Surface, var: Variation) -> np.ndarray:
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
    diffuse *= cast_shadow(surf, key)
    sky = var.ambient * (0.75 - 0.25 * ny)  # more light from above
    light = rgb(var.light_colour) * var.light_intensity
    irradiance = sky * occlusion + (diffuse * occlusion) * light
    return albedo * albedo * irradiance + (spec * (n_key > 0)) * light


def _background(var: Variation) -> np.ndarray:
    """Linear-light background: a flat wall, a gradient, or soft blotches."""
    c0, c1 = rgb(var.background_colours[0]), rgb(var.background_colours[1])
    if var.background == "flat":
        return np.broadcast_to(c0 * c0 * 0.8, (3, SIZE, SIZE))
    if var.background == "gradient":
        angle = math.radians(var.background_angle)
        t = (math.cos(angle) * (PIXELS_X - 56) + math.sin(angle) * (PIXELS_Y - 56)) / 112 + 0.5
    else:
        t = noise(PIXELS_X, PIXELS_Y, 18.0, var.background_offset)
    srgb = c0 + np.clip(t, 0, 1) * (c1 - c0)
    return srgb * srgb * 0.8


def render(identity: Identity, variation: Variation) -> np.ndarray:
    """The aligned 112x112 RGB uint8 crop of `identity` photographed under `variation`."""
    feat = features(identity, variation)
    return render_with_camera(identity, variation, feat, camera(feat, variation))


def render_with_camera(identity: Identity, variation: Variation, feat: Features, cam: Camera):
    """`render` with the features and camera already worked out, for a caller that also
    needs the landmarks they give."""
    scene = face_scene(identity, variation, feat)
    surf = surface(scene, cam, identity, feat)
    normals, occlusion = smooth_normals_and_occlusion(surf)
    albedo = paint(identity, variation, feat, surf, cam)
    shaded = _shade(albedo, normals, occlusion, surf, variation)
    image = _background(variation)
    image = image + surf.mask * (shaded - image)
    _lenses(image, scene, cam, identity, surf)
    image = _soften_edges(np.sqrt(np.clip(image, 0, 1)), surf.index)
    image = (image * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0).copy()
    return _reproportion(image, identity, projected_landmarks(feat, cam))


def _reproportion(image: np.ndarray, idt: Identity, points: np.ndarray) -> np.ndarray:
    """Move the crop's content by the identity's proportions: a smooth (Gaussian radial
    basis) displacement that interpolates its offsets at `PROPORTION_POINTS`, placed on the
    rendered face by the landmarks, and none at the landmarks themselves. Fixed per identity,
    it changes the outline as real faces differ, beyond what the ellipsoids' numbers do."""
    a, b, t = similarity(TEMPLATE, points)
    to_crop = np.array([[a, -b], [b, a]])
    anchors = np.concatenate([PROPORTION_POINTS @ to_crop.T + t, points])
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


def _lenses(image, scene: Scene, cam: Camera, idt: Identity, surf: Surface) -> None:
    """Glasses lenses: a tint and a faint sheen over whatever is behind the rims."""
    if idt.glasses == "none":
        return
    a, c, _ = quadrics(scene, cam)
    tint = rgb(idt.lens_tint)
    for k in (k for k, clip in enumerate(scene.clips) if clip == RIM):
        (uxx, uxy, _), (uyx, uyy, _) = a[k][:2].tolist()
        dx, dy = PIXELS_X - float(c[k, 0]), PIXELS_Y - float(c[k, 1])
        u, v = uxx * dx + uxy * dy, uyx * dx + uyy * dy  # thin lens: its mid-plane will do
        inside = (lens_radius(u, v, idt) < lens_inner(idt)) & ((c[k, 2] > surf.depth) | ~surf.mask)
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
    mean = box_sum(image, 1) * np.float32(1 / 9)
    return image + (edge * np.float32(0.5)) * (mean - image)
