"""
Just enough DER to take a certificate apart and put it back together:
one TLV read or written, a constructed value split into its children, an
OBJECT IDENTIFIER decoded. Bytes from a peer are read here: every
malformation raises C{ValueError}, never anything else.
"""

from __future__ import annotations


def read(data: bytes, offset: int) -> tuple[int, int, int]:
    """
    The TLV at C{offset}: C{(tag, content_start, content_end)}.

    @raise ValueError: the header is cut short, or the value runs past
        C{data}.
    """
    if offset + 2 > len(data):
        raise ValueError("DER: truncated header")
    tag = data[offset]
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or start + count > len(data):
            raise ValueError("DER: bad length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("DER: the value runs past its container")
    return tag, start, end


def encode(tag: int, content: bytes) -> bytes:
    """
    One DER TLV.
    """
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def children(data: bytes, start: int, end: int) -> list[bytes]:
    """
    The encoded children of the constructed value whose content is
    C{data[start:end]}.

    @raise ValueError: a child runs past C{end}.
    """
    out = []
    while start < end:
        _, _, child_end = read(data, start)
        if child_end > end:
            raise ValueError("DER: a child runs past its parent")
        out.append(data[start:child_end])
        start = child_end
    return out


def decode_oid(content: bytes) -> str:
    """
    The dotted form of an OBJECT IDENTIFIER's content octets.

    @raise ValueError: they are empty or end inside an arc.
    """
    if not content or content[-1] & 0x80:
        raise ValueError("DER: malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in (first, arcs[0] - 40 * first, *arcs[1:]))
