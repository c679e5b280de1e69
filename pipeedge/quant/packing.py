"""Tight LSB-first bit packing of unsigned integer codes, 2..16 bits each.

The wire format concatenates every code of the tensor as one bit stream: code i occupies stream
bits [i*bits, (i+1)*bits), least significant bit first, and stream bit k lives in byte k // 8 at
bit k % 8. The payload is therefore ceil(count * bits / 8) bytes, and the unused high bits of the
last byte are zero (and ignored when unpacking).

Eight codes of `bits` bits fill exactly `bits` bytes, so both directions work on groups of eight
codes held in 64-bit words (two for bits > 8): SWAR shifts and masks move the fields together or
apart in three steps, and unaligned 64-bit windows with a `bits`-byte stride load and store whole
groups (stores OR into a zeroed buffer, since a word's bytes past its group are zero). Nothing
loops over codes or expands to one byte per bit; 8 and 16 bits are plain views.
"""

from __future__ import annotations

import numpy as np

MIN_BITS = 2
MAX_BITS = 16

_U64 = np.dtype("<u8")


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that `count` codes of `bits` bits occupy on the wire."""
    return -(-count * bits // 8)


def code_dtype(bits: int) -> np.dtype:
    """Smallest unsigned dtype holding a `bits`-bit code (uint8 up to 8 bits, else uint16)."""
    return np.dtype(np.uint8) if bits <= 8 else np.dtype("<u2")


def _mask(width: int) -> np.uint64:
    return np.uint64((1 << width) - 1)


def _lanes(field: int, lane: int) -> np.uint64:
    """A 64-bit mask selecting the low `field` bits of every `lane`-bit lane."""
    one = (1 << field) - 1
    return np.uint64(sum(one << s for s in range(0, 64, lane)))


def pack(codes: np.ndarray, bits: int, *, consume: bool = False) -> bytes:
    """Pack codes (uint8 for bits <= 8, uint16 above; values < 2**bits) into wire bytes.

    With `consume`, a contiguous `codes` array may be used as scratch space (saves a copy).
    """
    codes = np.ascontiguousarray(codes, dtype=code_dtype(bits)).reshape(-1)
    count = codes.size
    if bits in (8, 16):
        return codes.tobytes()
    groups = -(-count // 8)
    if consume and count == groups * 8 and codes.ctypes.data % 8 == 0:
        padded = codes
    else:
        padded = np.zeros(groups * 8, codes.dtype)
        padded[:count] = codes
    w = padded.view(_U64)
    out = np.zeros(groups * bits + 16, np.uint8)  # slack for the last 8-byte stores
    if bits < 8:
        # Eight 8-bit lanes, one code each. Squeeze lane pairs together: fields at (0, 8) ->
        # (0, b), then (0, 16) -> (0, 2b), then (0, 32) -> (0, 4b). Each word then holds its
        # group's 8b bits with zeros above, so storing it at byte g*b can OR over its
        # neighbours: groups closer than 8 bytes go in separate passes.
        _squeeze(w, ((16, bits), (32, 2 * bits), (64, 4 * bits)))
        apart = -(-8 // bits)
        for first in range(apart):
            stores = _windows(out, first * bits, apart * bits, len(range(first, groups, apart)))
            stores |= w[first::apart]
    else:
        # Four 16-bit lanes per word, two words per group of eight codes.
        _squeeze(w, ((32, bits), (64, 2 * bits)))
        pair = w.reshape(groups, 2)  # each word: 4 codes in its low 4b bits (4b < 64)
        high = pair[:, 1] >> np.uint64(64 - 4 * bits)  # the top 8b - 64 bits of the group
        low = pair[:, 1] << np.uint64(4 * bits)
        low |= pair[:, 0]
        _windows(out, 0, bits, groups)[...] = low  # stride b > 8: stores do not overlap
        stores = _windows(out, 8, bits, groups)
        stores |= high  # its upper bytes are zero: OR leaves the next group's low word intact
    return out[: packed_nbytes(count, bits)].tobytes()


def _windows(buf: np.ndarray, offset: int, stride: int, n: int) -> np.ndarray:
    """`n` little-endian 64-bit words of `buf` starting at byte `offset`, `stride` bytes apart
    (unaligned, possibly overlapping): word-wide loads and stores instead of byte loops."""
    return np.ndarray((n,), dtype=_U64, buffer=buf, offset=offset, strides=(stride,))


def _squeeze(w: np.ndarray, steps: tuple[tuple[int, int], ...]) -> None:
    """In place: in every `lane`-bit lane, move the field at lane/2 down to bit `width`."""
    tmp = np.empty_like(w)
    for lane, width in steps:
        half = lane // 2
        low = _lanes(half, lane)
        np.bitwise_and(w, ~low, out=tmp)
        tmp >>= np.uint64(half - width)
        w &= low
        w |= tmp


def _spread(w: np.ndarray, steps: tuple[tuple[int, int], ...]) -> None:
    """In place, the inverse of `_squeeze`: move the field at bit `width` up to lane/2."""
    tmp = np.empty_like(w)
    for lane, width in steps:
        half = lane // 2
        low = _lanes(width, lane)
        np.left_shift(w, np.uint64(half - width), out=tmp)
        tmp &= low << np.uint64(half)
        w &= low
        w |= tmp


def unpack(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack`: `count` codes (uint8 or uint16) from a uint8 array of exact length."""
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    if data.size != packed_nbytes(count, bits):
        raise ValueError(f"packed data has {data.size} bytes, expected "
                         f"{packed_nbytes(count, bits)} for {count} codes of {bits} bits")
    if bits == 8:
        return data
    if bits == 16:
        return data.view("<u2")
    groups = -(-count // 8)
    buf = np.zeros(groups * bits + 16, np.uint8)  # zero tail: padding codes and load slack
    buf[: data.size] = data
    if bits < 8:
        w = np.bitwise_and(_windows(buf, 0, bits, groups), _mask(8 * bits))
        # Reverse of pack: spread fields (0, 4b) -> (0, 32), (0, 2b) -> (0, 16), (0, b) -> (0, 8).
        _spread(w, ((64, 4 * bits), (32, 2 * bits), (16, bits)))
        codes: np.ndarray = w.view(np.uint8)[:count]
        return codes
    field = 4 * bits
    low = _windows(buf, 0, bits, groups)  # the group's first 64 bits
    high = _windows(buf, 8, bits, groups) & _mask(8 * bits - 64)  # and the rest
    pair = np.empty((groups, 2), _U64)  # split into two words of four codes each
    np.bitwise_and(low, _mask(field), out=pair[:, 0])
    high <<= np.uint64(64 - field)
    high |= low >> np.uint64(field)
    np.bitwise_and(high, _mask(field), out=pair[:, 1])
    w = pair.reshape(-1)
    _spread(w, ((64, 2 * bits), (32, bits)))
    return w.view("<u2")[:count]
