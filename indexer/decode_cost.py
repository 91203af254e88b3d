"""Cheap checks of what decoding a file would cost, made on its bytes before any decoder sees them.

A few megabytes can ask a decoder for far more work than their size suggests, in ways the pixel
limit does not see: Pillow handles every PNG chunk and every JPEG segment in Python (1.5 million
tiny tEXt chunks in 31 MB took 4 s of CPU, 3 million JPEG comment segments 6 s), and libjpeg walks
every block of the image once per progressive scan (a 49-megapixel JPEG whose 10 scans each repeat
50 times: 7 s). Real photos stay far below these limits.
"""

from __future__ import annotations

import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks of any kind, and ancillary ones (text, colour profiles, ...) that Pillow parses one by one.
MAX_PNG_CHUNKS = 50_000  # a 32 MB PNG written in 8 kB image-data chunks has 4,000
MAX_PNG_ANCILLARY_CHUNKS = 1_000
# Segments other than scans (APPn, COM, DQT, DHT, ...) and progressive scans of a JPEG.
MAX_JPEG_SEGMENTS = 1_000
MAX_JPEG_SCANS = 64  # encoders write 10 or so


class DecodeTooCostly(ValueError):
    """The file asks for much more decoding work than a real image; the message says what."""


def check_decode_cost(data: bytes) -> None:
    """Raise DecodeTooCostly for PNG and JPEG data over the limits above; other data passes."""
    if data.startswith(PNG_SIGNATURE):
        _check_png(data)
    elif data.startswith(b"\xff\xd8"):
        _check_jpeg(data)


def _check_png(data: bytes) -> None:
    chunks = ancillary = 0
    at = len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        if kind == b"IEND":
            return
        chunks += 1
        if kind[0] & 0x20 and kind not in (b"fdAT", b"fcTL"):  # lower-case first letter: ancillary
            ancillary += 1
        if chunks > MAX_PNG_CHUNKS:
            raise DecodeTooCostly(f"PNG has more than {MAX_PNG_CHUNKS:,} chunks")
        if ancillary > MAX_PNG_ANCILLARY_CHUNKS:
            raise DecodeTooCostly(f"PNG has more than {MAX_PNG_ANCILLARY_CHUNKS:,} ancillary (metadata) chunks")
        at += 12 + length


def _check_jpeg(data: bytes) -> None:
    segments = scans = 0
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return  # not a marker where one belongs: the decoder will say the file is corrupt
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0xD9:  # end of image
            return
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            at += 2
            continue
        at += 2 + struct.unpack_from(">H", data, at + 2)[0]
        if marker != 0xDA:
            segments += 1
            if segments > MAX_JPEG_SEGMENTS:
                raise DecodeTooCostly(f"JPEG has more than {MAX_JPEG_SEGMENTS:,} segments (metadata, tables)")
            continue
        scans += 1
        if scans > MAX_JPEG_SCANS:
            raise DecodeTooCostly(f"JPEG has more than {MAX_JPEG_SCANS} scans")
        at = _end_of_scan(data, at)


def _end_of_scan(data: bytes, at: int) -> int:
    """Where the marker after a scan's entropy-coded data starts (0xFF 0x00 is a data byte, RSTn continues)."""
    while True:
        at = data.find(b"\xff", at)
        if at < 0 or at + 1 >= len(data):
            return len(data)
        following = data[at + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            at += 2
            continue
        return at
