"""Encoded image bytes -> model input pixels, with a status per row. Never raises into Ray.

Statuses (column `status`; column `error` holds a message, None when `ok`):
- `ok`: decoded, converted to RGB, EXIF-oriented and resized to size x size.
- `decode_error`: no bytes (None, empty, not bytes-like), bytes of no image format we can
  recognise by signature (formats without one, such as TGA, land here too), or a recognised
  image that is truncated or corrupt. Pixels are always fully loaded, so truncation is seen.
- `unsupported`: a recognised image this pipeline does not decode: a format outside
  `ALLOWED_FORMATS` (e.g. ICO, PSD, JPEG 2000, AVIF, HEIC, SVG, JPEG XL); a multi-frame image
  (animated GIF/PNG/WebP, multi-page TIFF), where no frame is "the" face (MPO is the exception:
  its extra frames are previews of the first, so it decodes as its primary JPEG); or a pixel
  mode without a defined RGB meaning (e.g. float `F`, `LAB`).
- `too_large`: width * height > `max_pixels`, read from the header before any pixel is decoded.
  On the Pillow path its own guard (above twice `Image.MAX_IMAGE_PIXELS`) also says too_large.
Rows that reach `decode_batch` with another status (e.g. `read_error`) pass through untouched.

Conversions to 8-bit RGB: L, 1 and P by Pillow; CMYK naively (no ICC), Adobe-inverted JPEG CMYK
being detected by Pillow; anything with alpha or a transparent colour (RGBA, LA, PA, P or RGB
with `transparency`) is composited over `DecodeOptions.background` (white by default, what
viewers show); 16-bit grey (I;16, I;16B, I, the latter clipped to 0..65535) is scaled by
round(v / 257), so 65535 -> 255. EXIF orientation (XMP when EXIF has none, as Pillow does) is
applied, then the image is stretched to size x size only if it is not already that size:
power-of-two JPEG DCT scaling first (libjpeg's `draft`), then Pillow's antialiased bilinear,
whose kernel widens with the shrink factor so every source pixel counts (area-like, no aliasing).

JPEG backends: simplejpeg (libjpeg-turbo), when installed, decodes baseline/progressive YCbCr
and grey JPEGs ~1.8x faster than Pillow on 112x112 crops, behind the same size guard and with
the same DCT scaling; anything it declines or fails on (CMYK, YCCK, corrupt data) goes to
Pillow, which has the final word, so both backends give the same statuses and pixels.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from pipeline.status import DECODE_ERROR, OK, TOO_LARGE, UNSUPPORTED

try:
    import simplejpeg
except ImportError:  # optional: Pillow decodes everything without it
    simplejpeg = None

if TYPE_CHECKING:
    import torch

    from models.artifact import InputSpec


# What face-recognition datasets ship in; MPO comes in through the JPEG plugin.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM")
_ALLOWED = {*ALLOWED_FORMATS, "MPO"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_EIGHT_BIT = {"1", "L", "P", "RGB", "RGBX", "YCbCr", "CMYK", "LA", "La", "PA", "RGBA", "RGBa"}
_TURBO_COLOURSPACES = {"YCbCr", "Gray", "RGB"}  # CMYK/YCCK go to Pillow, which knows Adobe's
_JPEG_SOI = b"\xff\xd8\xff"
_EXIF_ID = b"Exif\x00\x00"
_XMP_ID = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}

# EXIF orientation -> the transform that makes the stored array upright (row 0 at the top).
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


@dataclass(frozen=True)
class DecodeOptions:
    """How bytes become model input. `jpeg_backend`: "auto" uses simplejpeg when installed;
    "simplejpeg" requires it where the options are built (a worker without it uses Pillow)."""

    size: int = 112
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    max_pixels: int = 4096 * 4096
    colour_order: str = "RGB"
    background: tuple[int, int, int] = (255, 255, 255)
    jpeg_backend: Literal["auto", "pillow", "simplejpeg"] = "auto"

    def __post_init__(self) -> None:
        # A bad value is a configuration error: raise here, on the driver, not per row.
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(self.std):
            raise ValueError(f"mean and std need 3 values, std non-zero: {self.mean}, {self.std}")
        if self.colour_order != "RGB":  # rather than feed a model swapped channels
            raise ValueError(f"colour_order must be 'RGB', got {self.colour_order!r}")
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ValueError(f"background must be 3 values in 0..255, got {self.background}")
        if self.jpeg_backend not in ("auto", "pillow", "simplejpeg"):
            raise ValueError(
                f"jpeg_backend must be auto, pillow or simplejpeg, got {self.jpeg_backend!r}"
            )
        if self.jpeg_backend == "simplejpeg" and simplejpeg is None:
            raise ValueError("jpeg_backend 'simplejpeg' needs the simplejpeg package")

    @classmethod
    def from_input_spec(cls, spec: InputSpec, **overrides: Any) -> DecodeOptions:
        """Options matching a model artifact's input; `overrides` set the other fields."""
        return cls(
            size=spec.size,
            mean=tuple(spec.mean),
            std=tuple(spec.std),
            colour_order=spec.colour_order,
            **overrides,
        )


DEFAULT_OPTIONS = DecodeOptions()


@dataclass(frozen=True)
class Decoded:
    """`pixels`: uint8 (size, size, 3) RGB when ok, else None. `width`/`height`: the
    displayed (EXIF-oriented) size when ok; for failures, the stored size if the header was
    read, else None."""

    pixels: np.ndarray | None
    width: int | None
    height: int | None
    status: str
    error: str | None


class _Refused(Exception):
    """Ends decoding of one image with a status other than ok."""

    def __init__(
        self, status: str, message: str, width: int | None = None, height: int | None = None
    ):
        super().__init__(message)
        self.status, self.width, self.height = status, width, height


def decode_image(data: Any, options: DecodeOptions = DEFAULT_OPTIONS) -> Decoded:
    """Decode one encoded image. Never raises (for an Exception): failures are statuses."""
    try:
        data = _as_bytes(data)
        if _use_simplejpeg(data, options) and (decoded := _decode_simplejpeg(data, options)):
            return decoded
        return _decode_pillow(data, options)
    except _Refused as r:
        return Decoded(None, r.width, r.height, r.status, str(r))
    except Exception as e:  # a decoder bug or odd input must cost one row, not the task
        return Decoded(None, None, None, DECODE_ERROR, f"{type(e).__name__}: {e}")


def _as_bytes(data: Any) -> bytes:
    if data is None:
        raise _Refused(DECODE_ERROR, "no image bytes (None)")
    if isinstance(data, np.ndarray) and data.dtype == np.uint8:
        data = data.tobytes()
    elif isinstance(data, bytearray | memoryview):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise _Refused(DECODE_ERROR, f"expected image bytes, got {type(data).__name__}")
    if not data:
        raise _Refused(DECODE_ERROR, "empty image bytes")
    return data


def _use_simplejpeg(data: bytes, options: DecodeOptions) -> bool:
    return (
        simplejpeg is not None and options.jpeg_backend != "pillow" and data.startswith(_JPEG_SOI)
    )


def _check_pixels(width: int, height: int, options: DecodeOptions, fmt: str) -> None:
    if width * height > options.max_pixels:
        raise _Refused(
            TOO_LARGE,
            f"{fmt} {width}x{height} = {width * height} pixels > max_pixels {options.max_pixels}",
            width,
            height,
        )


def _decode_simplejpeg(data: bytes, options: DecodeOptions) -> Decoded | None:
    """The fast path; None hands the image to Pillow (CMYK, or anything simplejpeg rejects:
    Pillow then decides, and words the error)."""
    try:
        height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)
    except Exception:
        return None
    if colourspace not in _TURBO_COLOURSPACES:
        return None
    _check_pixels(width, height, options, "JPEG")
    scale = _draft_scale(width, height, options.size)
    try:
        # simplejpeg picks the smallest scaling >= these sides: exactly 1/scale, Pillow's choice
        # (left alone it would also use 3/8, 5/8, ...).
        rgb = simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_width=-(-width // scale), min_height=-(-height // scale)
        )
    except Exception:  # strict mode: truncation and corrupt-data warnings land here
        return None
    return _finish(rgb, width, height, _jpeg_orientation(data), options.size)


def _draft_scale(width: int, height: int, size: int) -> int:
    """Pillow's `draft` rule: the largest of 8, 4, 2 that keeps both sides >= size, else 1."""
    fit = min(width // size, height // size)
    return next((s for s in (8, 4, 2) if fit >= s), 1)


def _jpeg_orientation(data: bytes) -> int:
    """EXIF (else XMP) orientation from a JPEG's APP1 segments, as Pillow reads it."""
    if _EXIF_ID not in data and _XMP_ID not in data:  # most crops: a C scan, not a Python walk
        return 1
    exif, xmp, pos = None, None, 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: no metadata after this
            break
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos + 4 : end]
        if marker == 0xE1 and exif is None and segment.startswith(_EXIF_ID):
            exif = segment
        elif marker == 0xE1 and xmp is None and segment.startswith(_XMP_ID):
            xmp = segment
        pos = end
    return _orientation(lambda: _exif_with_xmp(exif, xmp))


def _exif_with_xmp(exif: bytes | None, xmp: bytes | None) -> Image.Exif:
    tags = Image.Exif()
    if exif is not None:
        tags.load(exif)
    if ExifTags.Base.Orientation not in tags and xmp and (m := _XMP_ORIENTATION.search(xmp)):
        tags[ExifTags.Base.Orientation] = int(m[2])
    return tags


def _orientation(read_exif: Callable[[], Image.Exif]) -> int:
    """1..8; a damaged EXIF block or an unknown value leaves the image as stored, as viewers do."""
    try:
        value = read_exif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def _decode_pillow(data: bytes, options: DecodeOptions) -> Decoded:
    image = _open(data)
    with image:
        width, height = image.size
        _check_pixels(width, height, options, image.format)
        _check_decodable(image, width, height)
        if image.format in ("JPEG", "MPO"):
            image.draft(None, (options.size, options.size))  # DCT-domain downscale
        try:
            image.load()  # everything, now: LOAD_TRUNCATED_IMAGES stays False, so truncation raises
        except Exception as e:
            raise _Refused(
                DECODE_ERROR,
                f"{image.format} {width}x{height}: {type(e).__name__}: {e}",
                width,
                height,
            ) from None
        orientation = _orientation(image.getexif)
        rgb = _to_rgb(image, options.background)
    return _finish(rgb, width, height, orientation, options.size)


def _open(data: bytes) -> Image.Image:
    """Pillow's lazy open: the header only, tried by the allowed plugins alone."""
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise _Refused(*_classify_unidentified(data)) from None
    except Image.DecompressionBombError as e:
        raise _Refused(TOO_LARGE, str(e)) from None
    except Exception as e:  # a header cut short inside a plugin's parser
        raise _Refused(DECODE_ERROR, f"unreadable header: {type(e).__name__}: {e}") from None


def _check_decodable(image: Image.Image, width: int, height: int) -> None:
    what = f"{image.format} {width}x{height}"
    if image.format != "MPO" and getattr(image, "is_animated", False):
        raise _Refused(UNSUPPORTED, f"{what}: multi-frame image", width, height)
    if image.mode not in _EIGHT_BIT and image.mode not in _SIXTEEN_BIT:
        raise _Refused(UNSUPPORTED, f"{what}: pixel mode {image.mode}", width, height)


def _classify_unidentified(data: bytes) -> tuple[str, str]:
    """Status and message for bytes no allowed plugin opens, judged by signature only, so no
    other plugin's parser ever runs on them."""
    Image.init()
    prefix = data[:16]  # what Pillow's own signature checks look at
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        try:
            recognised = accept is not None and accept(prefix)
        except Exception:  # a signature check choking on a short prefix is a "no"
            recognised = False
        if recognised:
            if fmt in _ALLOWED:
                return DECODE_ERROR, f"{fmt}: unreadable header (truncated or corrupt)"
            return UNSUPPORTED, f"{fmt} images are not supported"
    if foreign := _foreign_format(data):
        return UNSUPPORTED, f"{foreign} images are not supported"
    return DECODE_ERROR, "not a recognised image format"


def _foreign_format(data: bytes) -> str | None:
    """Image formats Pillow cannot identify at all."""
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "HEIF"
    if data.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")):
        return "JPEG XL"
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<") and b"<svg" in head:
        return "SVG"
    return None


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT:
        return _sixteen_bit_to_rgb(np.asarray(image))
    if image.mode not in _EIGHT_BIT:  # GIF frames can change mode on load
        raise _Refused(UNSUPPORTED, f"{image.format}: pixel mode {image.mode}", *image.size)
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        image = Image.alpha_composite(base, rgba)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _sixteen_bit_to_rgb(values: np.ndarray) -> np.ndarray:
    """Scale 0..65535 to 0..255 with rounding (65535 -> 255, 32768 -> 128), grey to RGB."""
    wide = np.clip(values, 0, 65535).astype(np.uint32)
    grey = ((wide + 128) // 257).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _finish(rgb: np.ndarray, width: int, height: int, orientation: int, size: int) -> Decoded:
    if orientation in _UPRIGHT:
        rgb = _UPRIGHT[orientation](rgb)
    if orientation >= 5:  # the transposing ones
        width, height = height, width
    return Decoded(_fit(rgb, size), width, height, OK, None)


def _fit(rgb: np.ndarray, size: int) -> np.ndarray:
    """size x size x 3, resampled only when the shape differs; C-contiguous and writable,
    whichever path made it (arrays over Pillow's buffers are read-only)."""
    if rgb.shape[:2] != (size, size):
        image = Image.fromarray(np.ascontiguousarray(rgb))
        rgb = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
    return np.require(rgb, requirements=("C", "W"))


def decode_batch(
    batch: Mapping[str, Any], options: DecodeOptions = DEFAULT_OPTIONS
) -> dict[str, Any]:
    """Ray Data `map_batches` UDF (batch_format "numpy", or any dict of equal-length columns).

    Decodes column `image` of rows whose `status` is ok (missing `status`/`error` columns mean
    all ok); other rows pass through untouched. Adds `pixels` uint8 (N, size, size, 3), zeros
    where not ok, and `width`/`height` int32, -1 where unknown (a numpy column has no null);
    rewrites `status`/`error` as object arrays. Keeps every other column and every row.
    """
    n = len(next(iter(batch.values()), ()))
    images = batch.get("image", [None] * n)
    status = np.array(_column(batch, "status", OK, n), dtype=object)
    error = np.array(_column(batch, "error", None, n), dtype=object)
    pixels = np.zeros((n, options.size, options.size, 3), dtype=np.uint8)
    width = np.full(n, -1, dtype=np.int32)
    height = np.full(n, -1, dtype=np.int32)
    for i in range(n):
        if status[i] != OK:
            continue
        decoded = decode_image(images[i], options)
        status[i], error[i] = decoded.status, decoded.error
        width[i], height[i] = _int32_or_unknown(decoded.width), _int32_or_unknown(decoded.height)
        if decoded.pixels is not None:
            pixels[i] = decoded.pixels
    return {
        **batch,
        "pixels": pixels,
        "width": width,
        "height": height,
        "status": status,
        "error": error,
    }


def decode_pixels(batch: dict[str, Any], options: DecodeOptions = DEFAULT_OPTIONS) -> dict:
    """`decode_batch` without the encoded bytes: only pixels travel on to a model."""
    decoded = decode_batch(batch, options)
    decoded.pop("image")
    return decoded


def _column(batch: Mapping[str, Any], name: str, default: Any, n: int) -> Sequence[Any]:
    column = batch.get(name)
    return [default] * n if column is None else column


def _int32_or_unknown(value: int | None) -> int:
    # A TIFF header can claim up to 2**32 - 1; numpy would raise on the assignment.
    return value if value is not None and 0 <= value < 2**31 else -1


def to_model_input(
    pixels: np.ndarray | torch.Tensor, options: DecodeOptions = DEFAULT_OPTIONS
) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float32 (N, 3, H, W), (p / 255 - mean) / std, contiguous.

    The one place the torch side normalises, with `models.normalisation`, as the ONNX graph
    does, so both agree bit for bit."""
    # Here, not at the top: decode-only CPU workers never pay for importing torch.
    import torch

    from models.normalisation import normalise, pixel_scale

    x = torch.as_tensor(pixels)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 pixels (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    # On the pixels' device: a GPU scorer ships uint8 to the GPU and normalises there.
    mean = pixel_scale(options.mean, x.device)
    std = pixel_scale(options.std, x.device)
    x = x.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    return normalise(x, mean, std)
