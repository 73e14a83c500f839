"""A code as a picture: PNG for terminals and tests, SVG for the resident's page. Always error
correction level Q (a phone screen with a crack or glare still scans) and alphanumeric mode."""

from __future__ import annotations

import io

import segno


def symbol(text: str) -> segno.QRCode:
    return segno.make_qr(text, error="q", boost_error=False)


def png(text: str, *, scale: int = 6) -> bytes:
    out = io.BytesIO()
    symbol(text).save(out, kind="png", scale=scale, border=4)
    return out.getvalue()


def svg(text: str, *, scale: int = 5) -> str:
    """Inline SVG (no XML declaration) for a page."""
    return symbol(text).svg_inline(scale=scale, border=4, dark="#111", light="#fff")
