import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image, ImageFile

from models.artifact import InputSpec
from models.onnx import InferenceGraph
from pipeline import decode
from pipeline.bench.decode import bench_decode
from pipeline.decode import DecodeOptions, decode_batch, decode_image, to_model_input
from pipeline.status import DECODE_ERROR, OK, TOO_LARGE, UNSUPPORTED

HAVE_SIMPLEJPEG = decode.simplejpeg is not None
needs_simplejpeg = pytest.mark.skipif(not HAVE_SIMPLEJPEG, reason="simplejpeg not installed")
BACKENDS = ["pillow", pytest.param("simplejpeg", marks=needs_simplejpeg)]
RED, GREEN, GREY = (230, 20, 20), (20, 230, 20), (128, 128, 128)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def face_like(width: int, height: int) -> Image.Image:
    """Smooth gradients plus mild noise: compresses like a face crop, unlike pure noise."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([200 * x / width + 30, 150 * y / height + 50, 60 + 50 * (x + y) / width], -1)
    rgb += np.random.default_rng(1).normal(0, 6, rgb.shape)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def png_header(width: int, height: int) -> bytes:
    """A PNG with a valid IHDR claiming width x height and no pixel data at all."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small baseline JPEG whose SOF0 header is patched to claim width x height."""
    data = bytearray(encode(face_like(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_jpeg_at_model_size_is_decoded_without_resampling():
    data = encode(face_like(112, 112), "JPEG", quality=90)
    result = decode_image(data)
    assert (result.status, result.error, result.width, result.height) == (OK, None, 112, 112)
    assert result.pixels.dtype == np.uint8 and result.pixels.shape == (112, 112, 3)
    np.testing.assert_array_equal(result.pixels, np.asarray(Image.open(io.BytesIO(data))))


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_with_plain_pillow_at_model_size(backend):
    data = encode(face_like(112, 112), "JPEG", quality=90)
    result = decode_image(data, DecodeOptions(jpeg_backend=backend))
    np.testing.assert_array_equal(result.pixels, np.asarray(Image.open(io.BytesIO(data))))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("fmt", "size"), [("JPEG", 112), ("JPEG", 200), ("PNG", 112)])
def test_pixels_are_contiguous_and_writable(backend, fmt, size):
    result = decode_image(encode(face_like(size, size), fmt), DecodeOptions(jpeg_backend=backend))
    assert result.pixels.flags.c_contiguous and result.pixels.flags.writeable


def test_png_at_model_size_is_bit_exact():
    image = noise(112, 112)
    result = decode_image(encode(image, "PNG"))
    np.testing.assert_array_equal(result.pixels, np.asarray(image))


@pytest.mark.parametrize("size", [(224, 224), (64, 80), (113, 112)])
def test_other_sizes_are_resized(size):
    image = Image.new("RGB", size, (40, 90, 200))
    image.paste((250, 250, 250), (0, 0, size[0] // 2, size[1]))  # left half white
    result = decode_image(encode(image, "PNG"))
    assert result.status == OK and (result.width, result.height) == size
    assert result.pixels.shape == (112, 112, 3)
    assert tuple(result.pixels[56, 5]) == (250, 250, 250)
    assert tuple(result.pixels[56, 106]) == (40, 90, 200)


@needs_simplejpeg
@pytest.mark.parametrize("size", [(1000, 900), (320, 300), (250, 112)])
def test_large_jpeg_is_dct_scaled_identically_by_both_backends(size):
    data = encode(face_like(*size), "JPEG", quality=90)
    pillow = decode_image(data, DecodeOptions(jpeg_backend="pillow"))
    turbo = decode_image(data, DecodeOptions(jpeg_backend="simplejpeg"))
    assert pillow.status == turbo.status == OK
    assert (pillow.width, pillow.height) == (turbo.width, turbo.height) == size
    np.testing.assert_array_equal(pillow.pixels, turbo.pixels)
    full = Image.open(io.BytesIO(data)).convert("RGB").resize((112, 112), Image.Resampling.BOX)
    assert np.abs(pillow.pixels.astype(int) - np.asarray(full)).mean() < 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_progressive_and_grey_jpegs(backend):
    options = DecodeOptions(jpeg_backend=backend)
    progressive = encode(face_like(112, 112), "JPEG", progressive=True)
    result = decode_image(progressive, options)
    assert result.status == OK
    np.testing.assert_array_equal(result.pixels, np.asarray(Image.open(io.BytesIO(progressive))))
    grey = decode_image(encode(Image.new("L", (112, 112), 77), "JPEG"), options)
    assert grey.status == OK and np.abs(grey.pixels.astype(int) - 77).max() <= 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "None"),
        (b"", "empty"),
        ("not bytes", "got str"),
        (12345, "got int"),
        ([b"\xff"], "got list"),
        (b"definitely not an image, just some text", "not a recognised"),
        (bytes(range(256)) * 4, "not a recognised"),
        (png_header(10, 10)[:20], "unreadable header"),
        (png_header(10, 10)[:12], "PNG: unreadable header"),
    ],
)
def test_decode_error_for_missing_or_unrecognised_bytes(data, message):
    result = decode_image(data)
    assert result.status == DECODE_ERROR and message in result.error
    assert result.pixels is None and result.width is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("keep", [0.5, 0.9, -2])
def test_truncated_jpeg_is_a_decode_error(backend, keep):
    data = encode(face_like(200, 200), "JPEG", quality=90)
    cut = data[: int(len(data) * keep)] if keep > 0 else data[:keep]
    result = decode_image(cut, DecodeOptions(jpeg_backend=backend))
    assert result.status == DECODE_ERROR and "truncated" in result.error
    assert (result.width, result.height) == (200, 200)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_truncated_png_is_a_decode_error():
    data = encode(noise(64, 64), "PNG")
    result = decode_image(data[: len(data) // 2])
    assert result.status == DECODE_ERROR and result.pixels is None


def test_corrupt_png_data_is_a_decode_error():
    data = bytearray(encode(noise(64, 64), "PNG"))
    data[len(data) // 2] ^= 0xFF  # breaks the IDAT checksum
    assert decode_image(bytes(data)).status == DECODE_ERROR


def test_bytes_like_inputs_are_accepted():
    data = encode(Image.new("RGB", (112, 112), (1, 2, 3)), "PNG")
    for value in (bytearray(data), memoryview(data), np.frombuffer(data, dtype=np.uint8)):
        result = decode_image(value)
        assert result.status == OK and tuple(result.pixels[0, 0]) == (1, 2, 3)


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in (RED, GREEN)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (encode(Image.new("RGB", (32, 32)), "ICO"), "ICO"),
        (encode(Image.new("RGB", (32, 32)), "JPEG2000"), "JPEG2000"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "HEIF"),
        (animated("GIF"), "multi-frame"),
        (animated("PNG"), "multi-frame"),
        (animated("WEBP"), "multi-frame"),
        (animated("TIFF"), "multi-frame"),
        (encode(Image.new("F", (32, 32), 0.5), "TIFF"), "pixel mode F"),
    ],
)
def test_unsupported(data, message):
    result = decode_image(data)
    assert result.status == UNSUPPORTED and message in result.error
    assert result.pixels is None


def test_mpo_decodes_its_first_frame():
    frames = [Image.new("RGB", (112, 112), c) for c in (RED, GREEN)]
    data = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    result = decode_image(data)
    assert result.status == OK and np.abs(result.pixels.astype(int) - RED).max() <= 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_decompression_bomb_is_refused_from_the_header(backend):
    # No pixel data follows either header: decoding would have been a decode_error (or, with
    # real data, 2.7 GB of RGB); too_large shows it was refused first.
    options = DecodeOptions(jpeg_backend=backend)
    for data in (png_header(30000, 30000), jpeg_claiming(30000, 30000)):
        result = decode_image(data, options)
        assert result.status == TOO_LARGE and result.pixels is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_too_large_reports_size_and_never_decodes(backend, monkeypatch):
    decodes = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda self: decodes.append("pil") or real_load(self)
    )
    if HAVE_SIMPLEJPEG:
        monkeypatch.setattr(decode.simplejpeg, "decode_jpeg", lambda *a, **k: decodes.append(1))
    options = DecodeOptions(max_pixels=150 * 150, jpeg_backend=backend)
    for image in (face_like(200, 160), face_like(160, 200)):
        for fmt in ("JPEG", "PNG"):
            result = decode_image(encode(image, fmt), options)
            assert result.status == TOO_LARGE and "max_pixels 22500" in result.error
            assert (result.width, result.height) == image.size
    assert decodes == []
    assert decode_image(png_header(5000, 5000)).status == TOO_LARGE  # default max_pixels
    assert decode_image(encode(face_like(150, 150), "PNG"), options).status == OK


def rgb_of(data: bytes, **options) -> np.ndarray:
    result = decode_image(data, DecodeOptions(**options))
    assert result.status == OK, result.error
    return result.pixels.astype(int)


def test_grey_and_one_bit():
    assert (rgb_of(encode(Image.new("L", (112, 112), 77), "PNG")) == 77).all()
    bits = np.zeros((112, 112), dtype=bool)
    bits[:, 56:] = True
    one = Image.fromarray(bits)
    assert one.mode == "1"
    pixels = rgb_of(encode(one, "PNG"))
    assert (pixels[:, :56] == 0).all() and (pixels[:, 56:] == 255).all()


def test_palette():
    image = Image.new("P", (112, 112), 0)
    image.putpalette([10, 20, 30, 200, 150, 100] + [0] * 762)
    image.paste(1, (0, 0, 56, 112))
    pixels = rgb_of(encode(image, "PNG"))
    assert tuple(pixels[0, 0]) == (200, 150, 100) and tuple(pixels[0, 111]) == (10, 20, 30)
    transparent = rgb_of(encode(image, "PNG", transparency=1), background=(0, 0, 255))
    assert tuple(transparent[0, 0]) == (0, 0, 255) and tuple(transparent[0, 111]) == (10, 20, 30)


def test_alpha_is_composited_over_the_background():
    rgba = np.zeros((112, 112, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:, :40, 3], rgba[:, 40:80, 3], rgba[:, 80:, 3] = 0, 128, 255
    pixels = rgb_of(encode(Image.fromarray(rgba), "PNG"))
    assert tuple(pixels[0, 0]) == (255, 255, 255)  # default background: white
    expected = [(c * 128 + 255 * 127) / 255 for c in (200, 100, 50)]
    assert np.abs(pixels[0, 50] - expected).max() <= 1
    assert tuple(pixels[0, 100]) == (200, 100, 50)
    dark = rgb_of(encode(Image.fromarray(rgba), "PNG"), background=(0, 0, 0))
    assert tuple(dark[0, 0]) == (0, 0, 0)


def test_grey_with_alpha_and_rgb_with_a_transparent_colour():
    la = Image.merge("LA", [Image.new("L", (112, 112), 100), Image.new("L", (112, 112), 255)])
    la.paste((100, 0), (0, 0, 56, 112))
    pixels = rgb_of(encode(la, "PNG"), background=(10, 20, 30))
    assert tuple(pixels[0, 0]) == (10, 20, 30) and tuple(pixels[0, 111]) == (100, 100, 100)
    rgb = Image.new("RGB", (112, 112), (1, 2, 3))
    rgb.paste((9, 9, 9), (56, 0, 112, 112))
    keyed = rgb_of(encode(rgb, "PNG", transparency=(1, 2, 3)))
    assert tuple(keyed[0, 0]) == (255, 255, 255) and tuple(keyed[0, 111]) == (9, 9, 9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("cmyk", "rgb"),
    [
        ((0, 0, 0, 0), (255, 255, 255)),
        ((255, 0, 0, 0), (0, 255, 255)),
        ((0, 255, 255, 0), (255, 0, 0)),
        ((0, 0, 0, 255), (0, 0, 0)),
        ((0, 0, 0, 128), (127, 127, 127)),
    ],
)
def test_adobe_cmyk_jpeg(backend, cmyk, rgb):
    data = encode(Image.new("CMYK", (112, 112), cmyk), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).info.get("adobe") is not None  # inverted convention
    pixels = rgb_of(data, jpeg_backend=backend)
    assert np.abs(pixels - rgb).max() <= 3


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_sixteen_bit_is_scaled_not_clipped(mode):
    values = np.resize(
        np.array([0, 200, 257 * 100, 32768, 65280, 65535], dtype=np.uint16), (112, 112)
    )
    image = Image.frombytes(mode, (112, 112), values.astype(">u2" if mode.endswith("B") else "<u2"))
    for fmt in ("PNG", "TIFF") if mode == "I;16" else ("TIFF",):
        data = encode(image, fmt)
        assert Image.open(io.BytesIO(data)).mode == mode
        pixels = rgb_of(data)
        assert pixels[0, :6, 0].tolist() == [0, 1, 100, 128, 254, 255]  # round(v / 257)
        assert (pixels == pixels[..., :1]).all()


def test_32_bit_integers_are_read_on_the_16_bit_scale():
    values = np.resize(np.array([-5, 0, 32768, 65535, 70000], dtype=np.int32), (112, 112))
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert rgb_of(data)[0, :5, 1].tolist() == [0, 0, 128, 255, 255]


# Where the displayed top-left and top-right corners lie in the stored image, per the EXIF
# orientation tag's definition (which stored side is row 0 / column 0); "L" = last.
CORNERS = {
    1: ((0, 0), (0, "L")),
    2: ((0, "L"), (0, 0)),
    3: (("L", "L"), ("L", 0)),
    4: (("L", 0), ("L", "L")),
    5: ((0, 0), ("L", 0)),
    6: (("L", 0), (0, 0)),
    7: (("L", "L"), (0, "L")),
    8: ((0, "L"), ("L", "L")),
}


def stored_image(orientation: int) -> Image.Image:
    """What a camera stores for a 30x20 (w x h) display with a red top-left and a green
    top-right 8x8 block."""
    rows, cols = (20, 30) if orientation <= 4 else (30, 20)
    pixels = np.full((rows, cols, 3), GREY, dtype=np.uint8)
    for (r, c), colour in zip(CORNERS[orientation], (RED, GREEN), strict=True):
        r0 = 0 if r == 0 else rows - 8
        c0 = 0 if c == 0 else cols - 8
        pixels[r0 : r0 + 8, c0 : c0 + 8] = colour
    return Image.fromarray(pixels)


def assert_upright(result) -> None:
    assert result.status == OK and (result.width, result.height) == (30, 20)
    # The 30x20 display is stretched to 112x112: the 8x8 blocks cover ~30 x 45 pixels.
    for (r, c), colour in {
        (10, 10): RED,
        (10, 101): GREEN,
        (100, 10): GREY,
        (100, 101): GREY,
    }.items():
        assert np.abs(result.pixels[r, c].astype(int) - colour).max() < 40, (r, c, colour)


def with_orientation(orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return encode(stored_image(orientation), fmt, exif=exif, quality=95)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_png(orientation):
    assert_upright(decode_image(with_orientation(orientation, "PNG")))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg(orientation, backend):
    data = with_orientation(orientation, "JPEG")
    assert_upright(decode_image(data, DecodeOptions(jpeg_backend=backend)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_xmp_orientation_when_exif_has_none(backend):
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    data = encode(stored_image(6), "JPEG", xmp=xmp, quality=95)
    assert_upright(decode_image(data, DecodeOptions(jpeg_backend=backend)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_damaged_or_unknown_orientation_leaves_the_image_as_stored(backend):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 9
    data = encode(stored_image(1), "JPEG", exif=exif, quality=95)
    assert_upright(decode_image(data, DecodeOptions(jpeg_backend=backend)))
    damaged = data.replace(b"Exif\x00\x00MM", b"Exif\x00\x00XX").replace(
        b"Exif\x00\x00II", b"Exif\x00\x00XX"
    )
    assert_upright(decode_image(damaged, DecodeOptions(jpeg_backend=backend)))


def test_decode_batch_keeps_rows_and_passes_failed_rows_through():
    good = encode(Image.new("RGB", (112, 112), (5, 6, 7)), "PNG")
    batch = {
        "image_id": np.array(["a", "b", "c", "d", "e"], dtype=object),
        "image": np.array([good, b"garbage", None, None, png_header(5000, 5000)], dtype=object),
        "status": np.array([OK, OK, "read_error", OK, OK], dtype=object),
        "error": np.array([None, None, "boom", None, None], dtype=object),
    }
    out = decode_batch(batch)
    assert out["status"].tolist() == [OK, DECODE_ERROR, "read_error", DECODE_ERROR, TOO_LARGE]
    assert out["error"][0] is None and out["error"][2] == "boom"
    assert out["image_id"].tolist() == ["a", "b", "c", "d", "e"]
    assert out["pixels"].shape == (5, 112, 112, 3) and out["pixels"].dtype == np.uint8
    assert (out["pixels"][0] == (5, 6, 7)).all() and not out["pixels"][1:].any()
    assert out["width"].dtype == out["height"].dtype == np.int32
    assert out["width"].tolist() == [112, -1, -1, -1, 5000]
    assert batch["status"][1] == OK  # the input batch is not modified


def test_decode_batch_without_status_columns_and_with_weird_values():
    good = encode(Image.new("RGB", (64, 64), (5, 6, 7)), "JPEG")
    out = decode_batch({"image": [good, 42, "text", b"", [1, 2]]}, DecodeOptions(size=32))
    assert out["status"].tolist() == [OK] + [DECODE_ERROR] * 4
    assert out["pixels"].shape == (5, 32, 32, 3)
    assert out["height"].tolist() == [64, -1, -1, -1, -1]
    empty = decode_batch({"image": np.array([], dtype=object)})
    assert empty["pixels"].shape == (0, 112, 112, 3) and len(empty["status"]) == 0


def test_to_model_input_values_and_layout():
    pixels = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    pixels[0, 1, 2] = (0, 255, 51)
    pixels[1] = 255
    x = to_model_input(pixels)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 4, 5) and x.is_contiguous()
    assert torch.allclose(x[0, :, 1, 2], torch.tensor([-1.0, 1.0, -0.6]))
    assert (x[0, :, 0, 0] == -1).all() and (x[1] == 1).all()


def test_to_model_input_matches_the_onnx_graph_normalisation():
    spec = InputSpec(size=8, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    pixels = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    graph = InferenceGraph(torch.nn.Identity(), spec)
    expected = graph(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    assert torch.equal(to_model_input(pixels, DecodeOptions.from_input_spec(spec)), expected)


def test_to_model_input_rejects_other_layouts():
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(np.zeros((1, 3, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(np.zeros((1, 8, 8, 3), dtype=np.float32))


def test_options_from_input_spec_and_validation():
    spec = InputSpec(size=128, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    options = DecodeOptions.from_input_spec(spec, max_pixels=1000)
    assert (options.size, options.mean, options.std, options.max_pixels) == (
        128,
        (0.1, 0.2, 0.3),
        (0.4, 0.5, 0.6),
        1000,
    )
    for bad in (
        {"size": 0},
        {"max_pixels": 0},
        {"colour_order": "BGR"},
        {"std": (1, 0, 1)},
        {"background": (0, 0, 256)},
        {"jpeg_backend": "cv2"},
    ):
        with pytest.raises(ValueError):
            DecodeOptions(**bad)


def test_bench_decode_reports_every_backend_as_json():
    report = bench_decode(images=2, seconds=0.01, sizes=(112, 300), log=lambda line: None)
    json.dumps(report)
    backends = ["pillow", "simplejpeg"] if HAVE_SIMPLEJPEG else ["pillow"]
    assert [(r["source_size"], r["backend"]) for r in report["results"]] == [
        (size, b) for size in (112, 300) for b in backends
    ]
    assert all(r["images_per_s"] > 0 and r["ratio_to_bare"] > 0 for r in report["results"])
