"""A code as a picture and back: PNG for terminals and tests, SVG for the resident's page, and the
text of a QR in an uploaded picture (zxing-cpp). Always error correction level Q (a phone screen with
a crack or glare still scans) and alphanumeric mode."""

from __future__ import annotations

import io

import segno
import zxingcpp
from PIL import Image, UnidentifiedImageError

from smartcare.platform.errors import InvalidInput


def symbol(text: str) -> segno.QRCode:
    return segno.make_qr(text, error="q", boost_error=False)


def png(text: str, *, scale: int = 6) -> bytes:
    out = io.BytesIO()
    symbol(text).save(out, kind="png", scale=scale, border=4)
    return out.getvalue()


def svg(text: str, *, scale: int = 5) -> str:
    """Inline SVG (no XML declaration) for a page."""
    return symbol(text).svg_inline(scale=scale, border=4, dark="#111", light="#fff")


def read_picture(data: bytes) -> str:
    """The text of the QR code in a picture, or an error that says what is wrong with the picture."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError):
        raise InvalidInput("the upload is not a picture (PNG, JPEG …)", field="image") from None
    found = [b for b in zxingcpp.read_barcodes(image) if b.format == zxingcpp.BarcodeFormat.QRCode and b.valid]
    if not found:
        raise InvalidInput("no QR code found in the picture", field="image", hint="upload a sharper or larger picture")
    return found[0].text
