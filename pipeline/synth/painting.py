"""Surface colour: skin, hair and eyes, and the features without much relief (lips, brows,
lashes and lid creases, nostrils, moles, facial hair, age lines), painted in object
coordinates so that they follow the head as it turns."""

from __future__ import annotations

import functools

import numpy as np

from pipeline.synth.geometry import Camera, Features
from pipeline.synth.pixels import noise, smoothstep
from pipeline.synth.scene import EYE, FRAME, HAIR, SOCKET, eye_local, lid_arcs, pixel_box
from pipeline.synth.surfaces import Surface
from pipeline.synth.types import Identity, Variation


def _mix(colour: np.ndarray, target, alpha) -> None:
    """colour += alpha * (target - colour), in place; alpha broadcasts over channels."""
    target = target if isinstance(target, np.ndarray) else rgb(target)
    colour += np.asarray(alpha, dtype=np.float32) * (target - colour)


def rgb(values) -> np.ndarray:
    """A colour shaped (3, 1, 1) to broadcast over channel-first images."""
    return np.asarray(values, dtype=np.float32).reshape(3, 1, 1)


def paint(idt: Identity, var: Variation, feat: Features, surf: Surface, cam: Camera):
    """Surface colour (sRGB, 0-1) of every pixel that sees the face."""
    albedo = _paint_skin(surf, idt, var, feat, cam)
    material = surf.material
    if idt.hair_style != "bald" or idt.beard == "full":
        _mix(albedo, _paint_hair(surf, idt), material == HAIR)
    _paint_eyes(albedo, surf, idt, var, feat, cam)
    socket = rgb([0.45, 0.30, 0.28]) * rgb(idt.skin_colour) ** 0.5
    _mix(albedo, socket, material == SOCKET)
    if idt.glasses != "none":
        _mix(albedo, idt.frame_colour, material == FRAME)
    return albedo


def _paint_skin(surf: Surface, idt: Identity, var: Variation, feat: Features, cam: Camera):
    """Skin tone with blotches and pores everywhere; the details each in the pixel box of
    their object-space region, so that small features cost little."""
    x, y, z = surf.x, surf.y, surf.z
    off = idt.texture_offset
    blotch = noise(x, y, 7.0, off) - 0.5
    pores = noise(x, y + 0.37 * z, 0.9, (off[1], off[0])) - 0.5
    colour = rgb(idt.skin_colour) * (
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
        box = pixel_box(cam, low, high)
        if box is not None:
            paint(colour[:, box[0], box[1]], x[box], y[box], z[box], idt, var, feat)
    return np.clip(colour, 0.0, 1.0)


def _paint_blush(colour, x, y, z, idt: Identity, var: Variation, feat: Features):
    """Warmer (less green and blue) cheeks and nose."""
    cheeks = np.exp(-(((np.abs(x) - 22) * (1 / 9)) ** 2 + ((y - 20) * (1 / 8)) ** 2))
    nose = np.exp(-((x * 0.2) ** 2 + ((y - feat.nose_y) * (1 / 6)) ** 2))
    colour[1:] *= 1 - idt.blush * (cheeks + 0.6 * nose) * (z > -16)


def _paint_freckles(colour, x, y, z, idt: Identity, var: Variation, feat: Features):
    off = idt.texture_offset
    spots = noise(x, y, 1.6, (off[0] + 71, off[1] + 13)) > 0.78
    area = np.exp(-(((np.abs(x) - 12) * (1 / 18)) ** 2 + ((y - 14) * (1 / 12)) ** 2))
    colour *= 1 - (0.25 * idt.freckles) * spots * area * (z > -16)


def _paint_mole(mole, colour, x, y, z, idt: Identity, var: Variation, feat: Features):
    mx, my, mr = mole
    mole_alpha = smoothstep(mr + 0.4, mr - 0.4, np.hypot(x - mx, y - my)) * (z > -16)
    _mix(colour, rgb(idt.skin_colour) * 0.35, mole_alpha * 0.8)


def _paint_age(colour, x, y, z, idt: Identity, var: Variation, feat: Features):
    """Lines that deepen with age: nasolabial folds from the nose wings to beyond the mouth
    corners (deeper in a smile), forehead lines, crow's feet and the lower-lid crease."""
    ax = np.abs(x)
    top, bottom = feat.nose_y - 3, feat.mouth_y + 9
    t = np.clip((y - top) * (1 / (bottom - top)), 0, 1)
    wing = 6.3 * idt.nose_width + 4
    fold_x = wing + (feat.mouth_w + 3 - wing) * t + 2.5 * np.sin(np.pi * t)
    fold = np.exp(-(((ax - fold_x) * (1 / 1.3)) ** 2)) * smoothstep(0, 0.15, t)
    fold *= smoothstep(1, 0.8, t) * (0.6 + 0.6 * var.smile)
    wave = 0.8 * np.sin(x * (1 / 9) + idt.texture_offset[0])
    forehead = sum(np.exp(-(((y + 20 + 5.5 * k - wave) * (1 / 0.7)) ** 2)) for k in range(3))
    forehead *= smoothstep(26, 14, ax) * (0.6 + 0.6 * max(var.brow_raise, 0))
    dx, dy = ax - feat.eye_x - feat.lid_w - 2.5, y - 1
    crows = np.exp(-((dy - 0.5 * dx * np.sign(dy)) ** 2) * 0.8) * (dx > 0) * smoothstep(7, 3, dx)
    side = np.where(x < 0, np.float32(-1), np.float32(1))
    u, v = eye_local(x - side * feat.eye_x, y, side * feat.tilt)
    bags = np.exp(-(((v - feat.lid_low - 3.5) * (1 / 0.9)) ** 2)) * smoothstep(9, 4, np.abs(u))
    lines = 0.4 * fold + 0.18 * forehead + 0.2 * crows + 0.25 * bags
    colour *= 1 - idt.age * np.clip(lines, 0, 0.8) * (z > -14)


def _paint_eye_surrounds(colour, x, y, z, idt: Identity, var: Variation, feat: Features):
    """Lash line along the upper lid, a softer lower lid line, the lid crease and a little
    darkening of the socket."""
    side = np.where(x < 0, np.float32(-1), np.float32(1))
    u, v = eye_local(x - side * feat.eye_x, y, side * feat.tilt)
    cu, ru, cl, rl = lid_arcs(feat)
    d_up = np.sqrt(u * u + (v - cu) ** 2) - ru  # > 0 outside the upper arc
    d_low = np.sqrt(u * u + (v - cl) ** 2) - rl
    along = smoothstep(feat.lid_w + 1.0, feat.lid_w - 2.5, np.abs(u)) * (z > -12)
    lashes = smoothstep(1.7, 0.4, d_up) * (d_low < 0.8) * along
    lower = smoothstep(1.0, 0.0, d_low) * (d_up < 0) * along * 0.3
    crease = np.exp(-(((d_up - 3.4) * (1 / 0.9)) ** 2)) * (v < 0) * along * 0.2
    socket = np.exp(-((u * (1 / (feat.lid_w + 4))) ** 2 + ((v + 1) * (1 / 6)) ** 2)) * 0.12
    _mix(colour, rgb(idt.brow_colour) * 0.45, np.clip(lashes * 0.9 + lower + crease + socket, 0, 1))


def _paint_brows(colour, x, y, z, idt: Identity, var: Variation, feat: Features):
    u = (np.abs(x) - 4.0) * (1 / (20.0 * idt.brow_length))
    uc = np.clip(u, 0, 1)
    arch = np.sin(np.pi * np.sqrt(uc) * uc**0.3)
    centre = -(10.5 * idt.brow_height + 3.0 * var.brow_raise) - 3.0 * idt.brow_arch * arch
    centre = centre + idt.brow_slope * uc
    half = 1.6 * idt.brow_thickness * (1.15 - 0.65 * uc)
    inside = smoothstep(-0.05, 0.08, u) * smoothstep(1.05, 0.9, u)
    band = smoothstep(half + 0.6, half - 0.6, np.abs(y - centre)) * inside * (z > -12)
    strands = 0.75 + 0.5 * noise(x * 0.5, y * 3.0, 1.0, idt.texture_offset)
    _mix(colour, idt.brow_colour, np.clip(band * strands, 0, 1) * 0.92)


def _paint_mouth(colour, x, y, z, idt: Identity, var: Variation, feat: Features):
    """Nostrils, and lips around a mouth line whose corners rise with a smile; when the
    mouth opens, a dark gap with the upper teeth tapers towards the corners."""
    front = z > -12
    for side in (-1, 1):
        d = ((x - side * 3.6 * idt.nose_width) * (1 / 2.2)) ** 2
        d = d + ((y - feat.nose_y - 3.0) * (1 / 1.2)) ** 2
        colour *= 1 - 0.7 * smoothstep(1.3, 0.6, d) * front
    t = np.clip(x * (1 / feat.mouth_w), -1.2, 1.2)
    line = feat.mouth_y - feat.lift * t * t
    edge = np.sqrt(np.clip(1 - t * t, 0, 1))
    gap = feat.gap * edge
    upper_bottom, lower_top = line - 0.35 * gap, line + 0.65 * gap
    bow = 1.0 + 0.35 * np.exp(-(((np.abs(x) - 3.5) * (1 / 3)) ** 2))
    bow -= 0.2 * np.exp(-((x * (1 / 1.5)) ** 2))
    upper = (3.4 * idt.upper_lip) * bow * np.sqrt(edge)
    lower = (4.6 * idt.lower_lip) * edge**0.7
    in_upper = smoothstep(-0.7, 0.7, y - (upper_bottom - upper))
    in_upper *= smoothstep(0.7, -0.7, y - upper_bottom)
    in_lower = smoothstep(-0.7, 0.7, y - lower_top) * smoothstep(0.7, -0.7, y - lower_top - lower)
    lips = np.clip(in_upper + in_lower, 0, 1) * (np.abs(t) < 1.05) * front
    _mix(colour, idt.lip_colour, lips * 0.9)
    if feat.gap > 0.5:
        opening = smoothstep(-0.5, 0.5, y - upper_bottom) * smoothstep(0.5, -0.5, y - lower_top)
        opening *= (np.abs(t) < 1) * front
        teeth = smoothstep(0.5, -0.5, y - upper_bottom - 0.45 * gap) * (np.abs(t) < 0.8)
        inside = rgb([0.75, 0.72, 0.66]) * (teeth * edge) + rgb([0.14, 0.04, 0.04])
        _mix(colour, inside, opening)
    else:
        crease = np.exp(-(((y - line) * (1 / 0.6)) ** 2)) * (np.abs(t) < 1.02) * front
        colour *= 1 - 0.55 * crease


def _paint_beard(colour, x, y, z, idt: Identity, var: Variation, feat: Features) -> None:
    """Facial hair painted over the skin: a moustache above the upper lip (its ends drooping),
    a goatee on the chin, or stubble / a full beard over the jaw up to the cheek line."""
    w = feat.mouth_w
    t = np.minimum(np.abs(x) * (1 / w), 1.3)
    lip_top = feat.mouth_y - 3.6 - feat.lift * t * t + 2.0 * t * t
    thick = 3.5 + 2.5 * idt.beard_density
    moustache = smoothstep(lip_top - thick - 0.8, lip_top - thick + 0.8, y)
    moustache *= smoothstep(lip_top + 1.0, lip_top - 0.3, y) * smoothstep(
        w + 2.5, w - 0.5, np.abs(x)
    )
    lower_lip = feat.mouth_y + feat.jaw_drop + 4.5
    if idt.beard == "moustache":
        region = moustache
    elif idt.beard == "goatee":
        d = (x * (1 / (0.55 * w + 2))) ** 2 + ((y - lower_lip - 8) * (1 / 10)) ** 2
        region = np.maximum(moustache, smoothstep(1.15, 0.85, d))
    else:
        cheek_line = 17 + 0.012 * x * x
        region = np.maximum(moustache, smoothstep(cheek_line, cheek_line + 6, y) * (z > -40))
    mouth_y = feat.mouth_y + feat.jaw_drop / 2
    lips = (x * (1 / (w + 0.5))) ** 2 + ((y - mouth_y) * (1 / (4.2 + feat.gap))) ** 2
    region = region * smoothstep(0.85, 1.1, lips) * (z > -45)
    strength = 0.4 if idt.beard == "stubble" else 0.85
    grain = noise(x * 1.3, y * 1.3, 0.8, idt.texture_offset)
    alpha = region * np.clip(strength * idt.beard_density * (0.6 + 0.8 * grain), 0, 1)
    _mix(colour, rgb(idt.hair_colour) * 0.85, alpha)


def _paint_hair(surf: Surface, idt: Identity) -> np.ndarray:
    """Strands that run away from the crown; curls are a coarser isotropic texture."""
    x, y, z = surf.x, surf.y, surf.z
    if idt.hair_style == "curly":
        grain = noise(x + 0.3 * z, y, 2.2, idt.texture_offset)
    else:
        angle = np.arctan2(x - idt.hair_part * 0.5, y + 30)
        radius = np.sqrt(x * x + (y + 60) ** 2 + (z + 40) ** 2)
        grain = noise(angle * 60, radius * 0.12, 1.0, idt.texture_offset)
    colour = rgb(idt.hair_colour) * (0.7 + 0.6 * grain)
    if idt.hair_style == "buzz":
        colour = 0.55 * colour + 0.45 * rgb(idt.skin_colour)
    if idt.hair_style in ("short", "long", "bun"):
        part = np.exp(-(((x - idt.hair_part) * (1 / 0.9)) ** 2)) * (y < -30) * (z > -30)
        colour *= 1 - 0.35 * part
    return np.clip(colour, 0, 1)


def _paint_eyes(albedo, surf: Surface, idt: Identity, var: Variation, feat, cam) -> None:
    """Sclera, iris (the identity's colour and pattern, a darker limbal ring) and pupil,
    placed by the angle from the gaze direction; the upper lid shades the top. Both eyes
    are painted in one box, each pixel relative to the eyeball on its side."""
    r = feat.eye_r
    low, high = (-feat.eye_x - r, -r, feat.eye_z), (feat.eye_x + r, r, feat.eye_z + r)
    box = pixel_box(cam, low, high)
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
    pattern = 0.65 + 0.7 * noise(around * 20, radial * 30, 1.0, idt.iris_offset)
    iris = rgb(idt.eye_colour) * (pattern * (1 - 0.55 * smoothstep(0.4, 0.56, radial)))
    sclera = rgb([0.86, 0.83, 0.80]) * (1 - 0.3 * np.clip(np.abs(dx) - 0.3, 0, 1))
    colour = sclera + (radial < 0.56) * (iris - sclera)
    colour *= 1 - (radial < 0.21) * np.float32(0.97)
    colour *= 1 - 0.5 * smoothstep(0.2, -0.6, dy)
    _mix(albedo[:, box[0], box[1]], colour, surf.material[box] == EYE)
