"""
A DER tree to take an OCSP response apart, change one field and sign it again.

Structure-aware mutation for the fuzz tests and the fixed hostile vectors: a
responder that controls its bytes (and holds a key the issuer authorised) can
send any algorithm identifier, any extension and any time encoding, correctly
signed. ``Node`` is a TLV: primitive (``content``) or constructed
(``children``); ``encode()`` writes it back with minimal lengths.

Paths into a BasicOCSPResponse (see ``basic`` and ``put_basic``):

    basic[0]                tbsResponseData
    basic[0][-?]            responseExtensions, tag 0xA1, when present
    basic[1]                signatureAlgorithm
    basic[2]                signature (BIT STRING)
    single(basic)           the first SingleResponse
    single(basic)[0][0]     its CertID's hashAlgorithm
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from hastaple.testing.pki import PKI, Issued

SEQUENCE = 0x30
OID = 0x06
NULL = 0x05
OCTET_STRING = 0x04
BIT_STRING = 0x03
BOOLEAN = 0x01
GENERALIZED_TIME = 0x18
CONSTRUCTED = 0x20


@dataclass
class Node:
    """One TLV."""

    tag: int
    content: bytes = b""
    children: list[Node] = field(default_factory=list)

    @property
    def constructed(self) -> bool:
        return bool(self.tag & CONSTRUCTED)

    def __getitem__(self, index: int) -> Node:
        return self.children[index]

    def encode(self) -> bytes:
        body = b"".join(c.encode() for c in self.children) if self.constructed else self.content
        return bytes([self.tag]) + _length(len(body)) + body


def _length(n: int) -> bytes:
    if n < 0x80:  # DER short form
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def parse(der: bytes) -> Node:
    node, end = _parse(der, 0)
    if end != len(der):
        raise ValueError("trailing bytes")
    return node


def _parse(der: bytes, pos: int) -> tuple[Node, int]:
    tag, first = der[pos], der[pos + 1]
    pos += 2
    if first & 0x80:
        count = first & 0x7F
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    else:
        length = first
    end = pos + length
    if tag & CONSTRUCTED:
        children = []
        while pos < end:
            child, pos = _parse(der, pos)
            children.append(child)
        return Node(tag, children=children), end
    return Node(tag, content=der[pos:end]), end


def oid(dotted: str) -> Node:
    """An OBJECT IDENTIFIER from its dotted form."""
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:  # base 128, the first two arcs as one
        chunk, rest = [arc & 0x7F], arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        out += bytes(reversed(chunk))
    return Node(OID, bytes(out))


def algorithm(dotted: str, *, null_params: bool = False) -> Node:
    """An AlgorithmIdentifier."""
    return Node(SEQUENCE, children=[oid(dotted), *([Node(NULL)] if null_params else [])])


def extension(dotted: str, value: bytes, *, critical: bool = False) -> Node:
    """An Extension: extnID, critical (only when true, as DER wants), extnValue."""
    flag = [Node(BOOLEAN, b"\xff")] if critical else []
    return Node(SEQUENCE, children=[oid(dotted), *flag, Node(OCTET_STRING, value)])


# --- OCSPResponse <-> BasicOCSPResponse -------------------------------------------------


def basic(response_der: bytes) -> Node:
    """The BasicOCSPResponse inside a DER OCSPResponse."""
    outer = parse(response_der)
    return parse(outer[1][0][1].content)


def put_basic(basic_node: Node) -> bytes:
    """A successful OCSPResponse (id-pkix-ocsp-basic) around ``basic_node``."""
    response_bytes = Node(
        SEQUENCE,
        children=[oid("1.3.6.1.5.5.7.48.1.1"), Node(OCTET_STRING, basic_node.encode())],
    )
    return Node(
        SEQUENCE, children=[Node(0x0A, b"\x00"), Node(0xA0, children=[response_bytes])]
    ).encode()


def single(basic_node: Node) -> Node:
    """The first SingleResponse of the tbsResponseData."""
    tbs = basic_node[0]
    responses = next(c for c in tbs.children if c.tag == SEQUENCE and c.children)
    return responses[0]


def resign(
    basic_node: Node,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    hash_alg: hashes.HashAlgorithm | None = None,
) -> bytes:
    """Sign the (changed) tbsResponseData again and return the whole OCSPResponse."""
    hash_alg = hash_alg or hashes.SHA256()
    tbs = basic_node[0].encode()
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(tbs, padding.PKCS1v15(), hash_alg)
    else:
        signature = key.sign(tbs, ec.ECDSA(hash_alg))
    basic_node.children[2] = Node(BIT_STRING, b"\x00" + signature)
    return put_basic(basic_node)


# --- fixed hostile vectors: each crashed validate (or passed) before it was fixed ----------

NONCE = "1.3.6.1.5.5.7.48.1.2"
CRL_REASON = "2.5.29.21"
SCT_LIST = "1.3.6.1.4.1.11129.2.4.5"
UNKNOWN = "1.2.3.4.5"


def _add_extension(node: Node, tag_children: Node) -> None:
    """Append ``tag_children`` as the [1] Extensions of ``node`` (creating it if needed)."""
    for child in node.children:
        if child.tag == 0xA1:  # [1] EXPLICIT Extensions
            child[0].children.append(tag_children)
            return
    node.children.append(Node(0xA1, children=[Node(SEQUENCE, children=[tag_children])]))


def mutated(pki: PKI, leaf: Issued, change: Callable[[Node], None], *, sign: bool = True) -> bytes:
    """A good response for ``leaf`` with ``change`` applied, signed again by the responder."""
    node = basic(pki.response(leaf.cert))
    change(node)
    return resign(node, pki.responder.key) if sign else put_basic(node)


def _set_sigalg(dotted: str, *, null: bool = False) -> Callable[[Node], None]:
    def change(node: Node) -> None:
        node.children[1] = algorithm(dotted, null_params=null)

    return change


def _set_certid_hash(dotted: str) -> Callable[[Node], None]:
    def change(node: Node) -> None:
        single(node)[0].children[0] = algorithm(dotted, null_params=True)

    return change


def _response_ext(ext: Node, *more: Node) -> Callable[[Node], None]:
    def change(node: Node) -> None:
        for e in (ext, *more):
            _add_extension(node[0], e)

    return change


def _single_ext(ext: Node) -> Callable[[Node], None]:
    def change(node: Node) -> None:
        _add_extension(single(node), ext)

    return change


def _revoked_with_reason(code: int) -> Callable[[Node], None]:
    def change(node: Node) -> None:
        revoked_info = Node(
            0xA1,
            children=[
                Node(GENERALIZED_TIME, b"20240101000000Z"),
                Node(0xA0, children=[Node(0x0A, bytes([code]))]),
            ],
        )
        single(node).children[1] = revoked_info

    return change


def _with_certs(pki: PKI, leaf: Issued, certs: list[bytes]) -> bytes:
    node = basic(pki.response(leaf.cert))
    node.children[3] = Node(0xA0, children=[Node(SEQUENCE, children=[parse(c) for c in certs])])
    return put_basic(node)


def recertify(pki: PKI, cert: x509.Certificate, change: Callable[[Node], None]) -> bytes:
    """``cert`` with its TBSCertificate changed, signed again by the intermediate."""
    node = parse(cert.public_bytes(serialization.Encoding.DER))
    change(node[0])
    key = pki.intermediate.key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signature = key.sign(node[0].encode(), ec.ECDSA(hashes.SHA256()))
    node.children[2] = Node(BIT_STRING, b"\x00" + signature)
    return node.encode()


def _spki(tbs: Node) -> Node:
    return tbs[6] if tbs[0].tag == 0xA0 else tbs[5]  # [0] Version


def _unknown_key(tbs: Node) -> None:
    _spki(tbs)[0].children[0] = oid(UNKNOWN)


def _broken_eku(tbs: Node) -> None:
    extensions = next(c for c in tbs.children if c.tag == 0xA3)[0]  # [3] Extensions
    eku = oid("2.5.29.37").content
    for ext in extensions.children:
        if ext[0].content == eku:
            ext.children[-1] = Node(OCTET_STRING, b"\x30\x03\x06\x01")  # truncated OID


Vector = Callable[[PKI, Issued], bytes]

# name -> (how to build it, words its rejection must contain)
HOSTILE: dict[str, tuple[Vector, str]] = {
    "sigalg-unknown-oid": (
        lambda p, c: mutated(p, c, _set_sigalg(UNKNOWN), sign=False),
        f"algorithm hastaple does not know ({UNKNOWN})"),
    "sigalg-rsa-name-on-ecdsa": (
        lambda p, c: mutated(p, c, _set_sigalg("1.2.840.113549.1.1.11", null=True), sign=False),
        "does not fit the signer's key"),
    "sigalg-ed25519-name-on-ecdsa": (
        lambda p, c: mutated(p, c, _set_sigalg("1.3.101.112"), sign=False),
        "does not fit the signer's key"),
    "certid-hash-md5": (
        lambda p, c: mutated(p, c, _set_certid_hash("1.2.840.113549.2.5")),
        "CertID hash hastaple cannot compute (1.2.840.113549.2.5)"),
    "certid-hash-unknown-oid": (
        lambda p, c: mutated(p, c, _set_certid_hash(UNKNOWN)),
        f"CertID hash hastaple cannot compute ({UNKNOWN})"),
    "critical-unknown-extension": (
        lambda p, c: mutated(p, c, _response_ext(extension(UNKNOWN, b"\x05\x00", critical=True))),
        f"critical response extension hastaple does not understand ({UNKNOWN})"),
    "critical-unknown-single-extension": (
        lambda p, c: mutated(p, c, _single_ext(extension(UNKNOWN, b"\x05\x00", critical=True))),
        "critical single response extension"),
    "duplicate-nonce": (
        lambda p, c: mutated(p, c, _response_ext(extension(NONCE, b"\x04\x01a"),
                                                 extension(NONCE, b"\x04\x01a"))),
        "response extension that does not decode"),
    "malformed-crl-reason-extension": (
        lambda p, c: mutated(p, c, _single_ext(extension(CRL_REASON, b"\xff"))),
        "single response extension that does not decode"),
    "malformed-sct-extension": (
        lambda p, c: mutated(p, c, _single_ext(extension(SCT_LIST, b"\x04\x01\x00"))),
        "single response extension that does not decode"),
    "revoked-reason-99": (
        lambda p, c: mutated(p, c, _revoked_with_reason(99)),
        "reason that does not decode"),
    "thisupdate-not-a-time": (
        lambda p, c: mutated(p, c, lambda n: single(n).children.__setitem__(
            2, Node(GENERALIZED_TIME, b"20241301000000Z"))),
        "not a DER OCSP response"),
    "responder-cert-unknown-key-type": (
        lambda p, c: _with_certs(p, c, [recertify(p, p.responder.cert, _unknown_key)]),
        "key type hastaple cannot use"),
    "responder-cert-malformed-eku": (
        lambda p, c: _with_certs(p, c, [recertify(p, p.responder.cert, _broken_eku)]),
        "a certificate hastaple cannot read"),
}  # fmt: skip
