"""The face as a scene of ellipsoids, and the ray caster that finds which one each pixel
sees: each ellipsoid's front intersection is a closed-form quadratic in the pixel coordinates,
and a z-buffer keeps the nearest."""

from __future__ import annotations

import numpy as np

from pipeline.synth.geometry import Camera, Features, rotation
from pipeline.synth.pixels import GRID, noise
from pipeline.synth.types import SIZE, Identity, Variation

# Materials. The last entry is the background, so that tables read at primitive index -1
# give it.
SKIN, HAIR, EYE, SOCKET, FRAME, BACKGROUND = range(6)
# Clip kinds: shell primitives have the eye openings cut out, the hair cap stops at the
# hairline, a glasses rim is the outer ring of its lens, a full beard leaves the mouth free.
NO_CLIP, SHELL, HAIRLINE, RIM, BEARD = range(5)


class Scene:
    """Ellipsoids in object space: centre, semi-axes, local frame (columns), material, clip."""

    def __init__(self) -> None:
        self.centres: list = []
        self.radii: list = []
        self.frames: list = []
        self.materials: list[int] = []
        self.clips: list[int] = []

    def add(self, centre, radii, material: int, clip: int = NO_CLIP, frame=None) -> None:
        self.centres.append(centre)
        self.radii.append(radii)
        self.frames.append(np.eye(3) if frame is None else frame)
        self.materials.append(material)
        self.clips.append(clip)

    def segment(self, start, end, width: float, depth: float, material: int, clip=NO_CLIP):
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


def face_scene(idt: Identity, var: Variation, feat: Features) -> Scene:
    """The face's ellipsoids. Proportions follow an adult head (about 15 cm wide, 19 deep,
    23 from chin to crown) at the template's scale of 5.6 pixels per centimetre."""
    scene = Scene()
    w, length, jaw = idt.head_width, idt.head_length, idt.jaw_width
    drop = feat.jaw_drop
    cranium_c, cranium_r = (0, -10 * length, -42), np.array([42 * w, 58 * length, 52])
    scene.add(cranium_c, cranium_r, SKIN, SHELL)
    ridge = 2.5 * idt.brow_ridge  # the brow ridge overhangs the eyes, more in men
    scene.add((0, -9.5, -21 + ridge), (33 * w, 7.5, 30), SKIN, SHELL)
    # Midface: prominent cheekbones widen it high up, full cheeks widen it lower down.
    full, bone = 2.5 * idt.cheek_fullness, 2.5 * idt.cheekbones
    scene.add((0, 16 - bone, -32), (35 * w + bone, 36, 40 + full), SKIN, SHELL)
    for side in (-1, 1):
        ear = idt.ear_size
        frame = rotation(side * (15 + 20 * idt.ear_angle), 0, 0)
        scene.add((side * 41 * w, 6, -44), (4.5, 12.5 * ear, 8.5 * ear), SKIN, frame=frame)
    # Jaw and chin drop when the mouth opens; the muzzle carries the lips forward.
    scene.add((0, 28 * length + drop * 0.5, -35), (34 * jaw + full, 33 * length, 40), SKIN)
    chin_y = 53 * length * idt.chin_length + drop
    scene.add((0, chin_y, -13), (12 * idt.chin_width, 8.5, 12), SKIN)
    scene.add((0, 33, -10), (17, 15, 15), SKIN)
    scene.add((0, 68, -46), (23 * jaw, 40, 24), SKIN)  # neck
    # Lips follow the painted mouth: the upper stays, the lower moves with the jaw.
    scene.add((0, feat.mouth_y - 3.2, -2), (12.5 * idt.mouth_width, 3.6, 8), SKIN)
    scene.add((0, feat.mouth_y + 3.8 + drop, -3), (11 * idt.mouth_width, 4.2, 8), SKIN)
    # Nose: bridge from between the eyes to the tip, the tip, and the two wings.
    tip_y, tip_z = feat.nose_y - 1, feat.nose_z
    scene.segment((0, -2, 5), (0, tip_y - 1, tip_z - 1), 4.2 * idt.nose_bridge, 4.5, SKIN)
    scene.add((0, tip_y, tip_z), (feat.nose_r * 1.05, feat.nose_r * 0.92, feat.nose_r), SKIN)
    for side in (-1, 1):
        wing = (side * 6.3 * idt.nose_width, tip_y + 1.2, tip_z - 6)
        scene.add(wing, (4.0 * idt.nose_width, 3.6, 4.6), SKIN)
        # An eyeball behind each lid opening, and a socket that fills the opening's corners.
        eye = (side * feat.eye_x, 0.0, feat.eye_z)
        scene.add(eye, (feat.eye_r,) * 3, EYE)
        scene.add((eye[0], 0.3, feat.eye_z - 1), (feat.lid_w + 1.5, 6.0, 4.0), SOCKET)
    _apply_relief(scene, idt)
    _hair(scene, idt, cranium_c, cranium_r)
    if idt.beard == "full":
        scene.add((0, 42, -24), (38 * jaw, 24, 37 + 2 * idt.beard_density), HAIR, BEARD)
    if idt.glasses != "none":
        _glasses(scene, idt, feat)
    return scene


def _apply_relief(scene: Scene, idt: Identity) -> None:
    """Move and reshape the face's skin primitives (all but the cranium) by the identity's
    relief: the shape detail that the named proportions leave out."""
    skin = [k for k in range(1, len(scene.centres)) if scene.materials[k] == SKIN]
    for k, row in zip(skin, idt.relief, strict=True):
        radii = np.asarray(scene.radii[k], float)
        scene.centres[k] = np.asarray(scene.centres[k], float) + radii * np.array(row[:3])
        scene.radii[k] = radii * np.exp(row[3:])


def _hair(scene: Scene, idt: Identity, centre, radii: np.ndarray) -> None:
    """A cap over the cranium cut at the hairline (thin for a buzz cut, thick for curls),
    plus a back volume and side curtains for long hair, or a bun."""
    style = idt.hair_style
    if style == "bald":
        return
    thickness = {"buzz": 0.8, "curly": 9 + 8 * idt.hair_volume}.get(style, 2 + 5 * idt.hair_volume)
    scene.add(centre, radii + thickness, HAIR, HAIRLINE)
    if style == "long":
        drop = 40 * idt.hair_length
        scene.add((0, 10 + drop / 2, -62), (48 * idt.head_width, 50 + drop / 2, 26), HAIR)
        for side in (-1, 1):
            start = (side * 39 * idt.head_width, -30, -26)
            end = (side * 42 * idt.head_width, 30 + drop, -38)
            scene.segment(start, end, 11, 22, HAIR)
    elif style == "bun":
        scene.add((0, -58, -75), (17, 15, 15), HAIR)


def _glasses(scene: Scene, idt: Identity, feat: Features) -> None:
    """Rims (thin lens-shaped ellipsoids of which only the outer ring is kept), a bridge and
    temples back to the ears; the glass itself is a tint applied after shading (`_lenses`)."""
    size = 1.12 if idt.glasses == "round" else 1.0
    z = 13.0
    for side in (-1, 1):
        scene.add((side * feat.eye_x, 0.5, z), (10.5 * size, 8.5 * size, 1.0), FRAME, RIM)
        hinge = (side * (feat.eye_x + 10.2 * size), -1.0, z - 1)
        scene.segment(hinge, (side * 41 * idt.head_width, 1.0, -40), 1.0, 1.0, FRAME)
    scene.segment((-feat.eye_x + 9, -1.5, z), (feat.eye_x - 9, -1.5, z), 1.2, 1.0, FRAME)


def lens_inner(idt: Identity) -> float:
    """Where the rim ends and the glass begins, in normalised lens radius."""
    return 0.84 if idt.glasses == "round" else 0.82


# --- ray casting ----------------------------------------------------------------------------


def quadrics(scene: Scene, cam: Camera):
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
    dx = GRID[None, :] - c[:, :1]
    dy = GRID[None, :] - c[:, 1:2]
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


def _eye_openings(feat: Features, cam: Camera) -> np.ndarray:
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
        box = pixel_box(
            cam, (side * feat.eye_x - margin, -margin, z), (side * feat.eye_x + margin, margin, z)
        )
        if box is None:
            continue
        y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
        px = ((GRID[x0:x1] - tx) / cam.scale - float(r[0, 2]) * z)[None, :]
        py = ((GRID[y0:y1] - ty) / cam.scale - float(r[1, 2]) * z)[:, None]
        x = inv[0][0] * px + inv[0][1] * py - side * feat.eye_x
        y = inv[1][0] * px + inv[1][1] * py
        u, v = eye_local(x, y, side * feat.tilt)
        hole[y0:y1, x0:x1] |= _lid_inside(u, v, feat)
    return hole


def pixel_box(cam: Camera, low, high):
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


def eye_local(dx, dy, tilt):
    """Coordinates along and across an eye tilted by `tilt` (outer corner up for > 0)."""
    c, s = np.cos(tilt), np.sin(tilt)
    return c * dx - s * dy, s * dx + c * dy


def lid_arcs(feat: Features) -> tuple[float, float, float, float]:
    """Centres (v) and radii of the two circles whose intersection is the almond opening."""
    w2 = feat.lid_w**2
    up, low = feat.lid_up, feat.lid_low
    centre_up = (w2 - up**2) / (2 * up)
    centre_low = -(w2 - low**2) / (2 * low)
    return centre_up, centre_up + up, centre_low, -centre_low + low


def _lid_inside(u, v, feat: Features):
    cu, ru, cl, rl = lid_arcs(feat)
    return (u * u + (v - cu) ** 2 < ru * ru) & (u * u + (v - cl) ** 2 < rl * rl)


def raycast(scene: Scene, cam: Camera, idt: Identity, feat: Features, a, c, half):
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
            if clip == SHELL:
                win &= ~openings[y0:y1, x0:x1]
            elif clip == RIM:
                dz = z - np.float32(c[k, 2])
                win &= _rim_radius(a[k], dx, t["dy"][k, y0:y1], dz, idt) > lens_inner(idt)
            elif clip == HAIRLINE:
                win &= _hairline_keep(*_to_object(cam, x0, x1, y0, y1, z), idt)
            elif clip == BEARD:
                win &= _beard_keep(*_to_object(cam, x0, x1, y0, y1, z)[:2], feat)
            np.copyto(depth[y0:y1, x0:x1], z, where=win)
            np.copyto(index[y0:y1, x0:x1], k, where=win)
    return depth, index


def _to_object(cam: Camera, x0: int, x1: int, y0: int, y1: int, z):
    """Object coordinates of the points at depth `z` over the pixel box [y0:y1, x0:x1]."""
    r = (cam.rotation / cam.scale).tolist()
    qx = (GRID[x0:x1] - float(cam.offset[0]))[None, :]
    qy = (GRID[y0:y1] - float(cam.offset[1]))[:, None]
    return tuple(r[0][i] * qx + r[1][i] * qy + r[2][i] * z for i in range(3))


def _rim_radius(a: np.ndarray, dx, dy, dz, idt: Identity):
    """Normalised radius on a lens, from its local coordinates A (q - C)."""
    (uxx, uxy, uxz), (uyx, uyy, uyz) = a[:2].tolist()
    u = (uxx * dx)[None, :] + (uxy * dy)[:, None] + uxz * dz
    v = (uyx * dx)[None, :] + (uyy * dy)[:, None] + uyz * dz
    return lens_radius(u, v, idt)


def lens_radius(u, v, idt: Identity):
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
    line += 3.0 * (noise(x * 0.8, z * 0.1, 1.2, idt.texture_offset) - 0.5)
    return y < line


def _beard_keep(x, y, feat: Features):
    """A full beard covers the jaw below the cheeks, leaving the lips free."""
    mouth = (x / (feat.mouth_w + 2)) ** 2 + ((y - feat.mouth_y - feat.jaw_drop / 2) / 6.5) ** 2
    return (y > 22 + 0.008 * x * x) & (mouth > 1)
