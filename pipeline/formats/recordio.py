"""dmlc RecordIO framing and mxnet image records, the codec under insightface's `.rec` files
(`rec.RecFormat` is the dataset format on top of it), without mxnet.

A record is the uint32 (little-endian) magic 0xced7230a, a uint32 whose top 3 bits are a
continuation flag and whose low 29 bits are the part length, the part's bytes, and zero padding
to a multiple of 4. A payload that contains the magic is split into several parts (see
`pack_record`). Payloads are mxnet image records: an `IfQQ` header (flag, label, id, id2), then
`flag` float32 labels when flag > 0, then the encoded image.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")  # magic, lrecord
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
_WHOLE, _FIRST, _MIDDLE, _LAST = 0, 1, 2, 3
_IMAGE_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
# Keys live in float32 labels (header and identity records), exact up to 2**24 only.
MAX_LABEL = 1 << 24


class RecordError(ValueError):
    """Bytes that are not a well-formed record; the message says what and at which byte."""


# --- RecordIO framing -------------------------------------------------------------------------


def pack_record(payload: bytes) -> bytes:
    """The RecordIO bytes of one payload, split where the magic word occurs in it.

    Split rule (dmlc's writer): the payload is searched for the magic's 4 bytes at 4-byte-
    aligned offsets only (unaligned occurrences stay as they are). Each aligned occurrence ends
    a part and is dropped; the parts are framed with cflag 1 (first), 2 (middle) and 3 (last),
    or as one part with cflag 0 when there is no occurrence. The reader joins the parts with
    the magic put back between them. Cuts fall at aligned offsets, so every part but the last
    has a length that is a multiple of 4 and only the last is padded; and no aligned magic is
    left inside any part, so in a .rec an aligned magic always starts a record.
    """
    parts = _split_at_magic(payload)
    flags = [_WHOLE] if len(parts) == 1 else [_FIRST, *[_MIDDLE] * (len(parts) - 2), _LAST]
    return b"".join(_frame(flag, part) for flag, part in zip(flags, parts, strict=True))


def _split_at_magic(payload: bytes) -> list[bytes]:
    parts, start = [], 0
    hit = payload.find(_MAGIC_BYTES)
    while hit >= 0:
        if hit % 4 == 0:
            parts.append(payload[start:hit])
            start = hit + len(_MAGIC_BYTES)
            hit = payload.find(_MAGIC_BYTES, start)
        else:
            hit = payload.find(_MAGIC_BYTES, hit + 1)
    parts.append(payload[start:])
    return parts


def _frame(flag: int, part: bytes) -> bytes:
    if len(part) > _LENGTH_MASK:
        raise ValueError(f"a RecordIO part holds at most {_LENGTH_MASK} bytes, not {len(part)}")
    padding = b"\0" * (-len(part) % 4)
    return _FRAME.pack(MAGIC, flag << _LENGTH_BITS | len(part)) + part + padding


def read_record_at(f: BinaryIO, offset: int, end: int | None = None) -> tuple[bytes, int]:
    """(payload, offset after the record) of the record whose first part starts at `offset`.

    Nothing at or past `end` (default: the file size) is read: a garbage length or a truncated
    file raises RecordError instead. Every part moves on by at least 8 bytes, so this ends.
    """
    end = stream_size(f) if end is None else end
    parts: list[bytes] = []
    pos = offset
    while True:
        flag, data = _read_part(f, pos, end, first=not parts)
        parts.append(data)
        pos += _FRAME.size + len(data) + (-len(data) % 4)
        if flag in (_WHOLE, _LAST):
            return _MAGIC_BYTES.join(parts), pos


def _read_part(f: BinaryIO, pos: int, end: int, *, first: bool) -> tuple[int, bytes]:
    if pos < 0 or pos + _FRAME.size > end:
        raise RecordError(f"no room for a record header at byte {pos}: the data ends at {end}")
    f.seek(pos)
    head = f.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise RecordError(f"truncated record header at byte {pos}")
    magic, lrecord = _FRAME.unpack(head)
    if magic != MAGIC:
        raise RecordError(f"bad magic 0x{magic:08x} at byte {pos}")
    flag, length = lrecord >> _LENGTH_BITS, lrecord & _LENGTH_MASK
    if flag not in ((_WHOLE, _FIRST) if first else (_MIDDLE, _LAST)):
        raise RecordError(f"unexpected continuation flag {flag} at byte {pos}")
    if pos + _FRAME.size + length > end:
        raise RecordError(f"record part at byte {pos} claims {length} bytes, past byte {end}")
    data = f.read(length)
    if len(data) < length:
        raise RecordError(f"truncated record at byte {pos}: {len(data)} of {length} bytes")
    return flag, data


def iter_records(
    f: BinaryIO, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """(offset, payload) of each record from `start` to `end` (default: the file size).

    Raises RecordError at the first malformed record: without an index, nothing after it can
    be located reliably.
    """
    end = stream_size(f) if end is None else end
    while start < end:
        payload, following = read_record_at(f, start, end)
        yield start, payload
        start = following


def stream_size(f: BinaryIO) -> int:
    f.seek(0, os.SEEK_END)
    return f.tell()


# --- mxnet image records ----------------------------------------------------------------------


class ImageHeader(NamedTuple):
    """mxnet's IRHeader. `label` is a tuple when the record carries several labels (flag > 0,
    the scalar label field is then unused)."""

    label: float | tuple[float, ...]
    id: int = 0
    id2: int = 0


def pack_image_header(header: ImageHeader) -> bytes:
    """The bytes that precede the encoded image in a record's payload."""
    if not isinstance(header.label, tuple):
        return _IMAGE_HEADER.pack(0, header.label, header.id, header.id2)
    if not header.label:
        raise ValueError("a label tuple needs at least one label")
    count = len(header.label)
    return _IMAGE_HEADER.pack(count, 0.0, header.id, header.id2) + struct.pack(
        f"<{count}f", *header.label
    )


def unpack_image_header(payload: bytes) -> tuple[ImageHeader, bytes]:
    """(header, encoded image bytes) of a record's payload."""
    if len(payload) < _IMAGE_HEADER.size:
        raise RecordError(
            f"payload of {len(payload)} bytes is shorter than the "
            f"{_IMAGE_HEADER.size}-byte image header"
        )
    flag, label, id_, id2 = _IMAGE_HEADER.unpack_from(payload)
    if flag == 0:
        return ImageHeader(label, id_, id2), payload[_IMAGE_HEADER.size :]
    end = _IMAGE_HEADER.size + 4 * flag
    if end > len(payload):
        raise RecordError(
            f"image header announces {flag} labels, more than the {len(payload)}-byte payload holds"
        )
    labels = struct.unpack_from(f"<{flag}f", payload, _IMAGE_HEADER.size)
    return ImageHeader(labels, id_, id2), payload[end:]


def dataset_header(payload: bytes) -> tuple[int, int] | None:
    """(first identity key, end) when `payload` is insightface's header record, else None.

    A header is a record with at least two labels and no image bytes; a record 0 with image
    bytes is an image (plain im2rec files have no header).
    """
    header, image = unpack_image_header(payload)
    if not isinstance(header.label, tuple) or len(header.label) < 2 or image:
        return None
    first, end = header.label[:2]
    if not (first.is_integer() and end.is_integer() and 1 <= first <= end):
        raise RecordError(f"header record labels {first}, {end} are not [first identity key, end]")
    return int(first), int(end)
