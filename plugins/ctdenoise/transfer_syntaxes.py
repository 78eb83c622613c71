"""The DICOM transfer syntaxes ctdenoise promises to decode, each with the decoder it relies on.

Declared once, here. Everything else derives from :data:`SUPPORTED`:

- the images that run ``ctdenoise convert`` (``images/worker-requirements.in``,
  ``images/airflow-requirements.in``) must list :func:`distributions` (a test reads them), and
  their builds run ``ctdenoise decoders``, which fails when a declared decoder is unavailable;
- :func:`require_decoder` turns "cannot decode" of a *supported* syntax whose decoder is
  missing into a :class:`MissingDecoderError` (a broken deployment, exit 1), not an input error
  that would blame, and refuse, a valid series;
- the image tests write a series in every syntax and convert it in each image's environment.

Decoding itself stays pydicom's plugin mechanism: this module only names the plugin pydicom must
find for each syntax (``gdcm`` for JPEG Lossless, the BSD-licensed choice; pylibjpeg-libjpeg is
GPL-3.0 and not used).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydicom import uid as uids


class MissingDecoderError(RuntimeError):
    """A supported transfer syntax cannot be decoded here: the environment (image) lacks its decoder."""


@dataclass(frozen=True)
class SupportedSyntax:
    """One supported transfer syntax.

    ``plugin`` is the pydicom pixel-decoder plugin it relies on (None: pydicom decodes it natively,
    with numpy and zlib); ``distributions`` are the PyPI packages that provide that plugin;
    ``lossless`` says whether decoded values equal the encoded ones exactly."""

    uid: str
    plugin: str | None
    distributions: tuple[str, ...]
    lossless: bool = True

    @property
    def name(self) -> str:
        return uids.UID(self.uid).name

    def unavailable(self) -> str | None:
        """Why this environment cannot decode the syntax with its declared plugin (None: it can)."""
        if self.plugin is None:
            return None
        from pydicom.pixels import get_decoder

        decoder = get_decoder(self.uid)
        if self.plugin in decoder.available_plugins:
            return None
        return f"pydicom's {self.plugin!r} decoder is unavailable (install {', '.join(self.distributions)})"


_JPEG2000 = ("pylibjpeg", "pylibjpeg-openjpeg")

SUPPORTED: tuple[SupportedSyntax, ...] = (
    SupportedSyntax(uids.ImplicitVRLittleEndian, None, ()),
    SupportedSyntax(uids.ExplicitVRLittleEndian, None, ()),
    SupportedSyntax(uids.DeflatedExplicitVRLittleEndian, None, ()),
    SupportedSyntax(uids.RLELossless, "pylibjpeg", ("pylibjpeg", "pylibjpeg-rle")),  # pydicom's own RLE is the slow fallback
    SupportedSyntax(uids.JPEGLossless, "gdcm", ("python-gdcm",)),
    SupportedSyntax(uids.JPEGLosslessSV1, "gdcm", ("python-gdcm",)),  # the most common lossless CT syntax
    SupportedSyntax(uids.JPEGLSLossless, "pyjpegls", ("pyjpegls",)),
    SupportedSyntax(uids.JPEGLSNearLossless, "pyjpegls", ("pyjpegls",), lossless=False),
    SupportedSyntax(uids.JPEG2000Lossless, "pylibjpeg", _JPEG2000),
    SupportedSyntax(uids.JPEG2000, "pylibjpeg", _JPEG2000, lossless=False),
)


def by_uid() -> dict[str, SupportedSyntax]:
    return {s.uid: s for s in SUPPORTED}


def distributions() -> set[str]:
    """Every PyPI distribution an image must install to decode all of :data:`SUPPORTED`."""
    return {name for s in SUPPORTED for name in s.distributions}


def require_decoder(transfer_syntax: str) -> None:
    """Raise :class:`MissingDecoderError` if ``transfer_syntax`` is supported but its decoder is
    not installed here (called when decoding failed, to tell a broken image from bad input)."""
    syntax = by_uid().get(str(transfer_syntax))
    reason = syntax.unavailable() if syntax is not None else None
    if reason:
        raise MissingDecoderError(f"cannot decode {syntax.name}, a supported transfer syntax: {reason}; this image is incomplete")


def report() -> list[dict[str, object]]:
    """One record per supported syntax: uid, name, plugin, whether it is decodable here (and why not)."""
    return [
        {"uid": s.uid, "name": s.name, "plugin": s.plugin or "native", "available": (why := s.unavailable()) is None,
         **({"reason": why} if why else {})}  # fmt: skip
        for s in SUPPORTED
    ]


def check() -> int:
    """``ctdenoise decoders``: print :func:`report` as JSON lines; 1 if any supported syntax is
    undecodable here (the image builds run it, so an image missing a decoder does not build)."""
    import sys

    records = report()
    for record in records:
        print(json.dumps(record, sort_keys=True))
    missing = [str(r["name"]) for r in records if not r["available"]]
    if missing:
        print(f"error: no decoder for {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0
