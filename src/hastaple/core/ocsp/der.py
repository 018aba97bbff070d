"""
Just enough DER reading to pull out the two fields cryptography does not expose.

HAProxy keys staples on the DER CertID, and CertID/ResponderID hash the bare
subjectPublicKey bits; both are a few TLVs deep in structures we already hold.
"""

from __future__ import annotations

from hastaple.errors import InvalidResponse

_LONG_FORM = 0x80
_VERSION_TAG = 0xA0  # [0] EXPLICIT Version in a TBSCertificate


def element(der: bytes, offset: int = 0) -> tuple[int, int, int]:
    """
    Return (tag, content start, content end) of the TLV at ``offset``.

    Raises:
        InvalidResponse: the bytes are not a well-formed TLV.
    """
    try:
        tag, first = der[offset], der[offset + 1]
        if first < _LONG_FORM:
            start, length = offset + 2, first
        else:
            count = first & 0x7F
            start = offset + 2 + count
            length = int.from_bytes(der[offset + 2 : start], "big")
    except IndexError as exc:
        raise InvalidResponse("truncated DER") from exc
    if start + length > len(der):
        raise InvalidResponse("truncated DER")
    return tag, start, start + length


def children(der: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """The TLVs inside ``der[start:end]`` as (tag, tlv start, content start, end)."""
    out = []
    pos = start
    while pos < end:
        tag, cstart, cend = element(der, pos)
        out.append((tag, pos, cstart, cend))
        pos = cend
    return out


def public_key_bits(spki: bytes) -> bytes:
    """The subjectPublicKey BIT STRING contents of a DER SubjectPublicKeyInfo."""
    _, start, end = element(spki)
    _algorithm, (_, _, bits_start, bits_end) = children(spki, start, end)[:2]
    return spki[bits_start + 1 : bits_end]  # skip the "unused bits" octet


def certificate_spki(cert: bytes) -> bytes:
    """
    The DER SubjectPublicKeyInfo of a DER Certificate, whatever its key type.

    Read from the bytes rather than from ``public_key()``, which refuses key
    types cryptography does not know: a certificate a responder includes
    must not stop the check just by being unusual.

    Raises:
        InvalidResponse: the bytes are not a certificate's TLVs.
    """
    _, start, _ = element(cert)
    _, tbs_start, tbs_end = element(cert, start)
    fields = children(cert, tbs_start, tbs_end)
    # version [0] is optional; then serial, signature, issuer, validity, subject, SPKI
    index = 6 if fields and fields[0][0] == _VERSION_TAG else 5
    if len(fields) <= index:
        raise InvalidResponse("truncated certificate")
    _, tlv_start, _, tlv_end = fields[index]
    return cert[tlv_start:tlv_end]
