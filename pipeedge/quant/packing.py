"""Tight LSB-first bit packing of unsigned integer codes, 2..16 bits each.

The wire format concatenates every code of the tensor as one bit stream: code i occupies stream
bits [i*bits, (i+1)*bits), least significant bit first, and stream bit k lives in byte k // 8 at
bit k % 8. The payload is therefore ceil(count * bits / 8) bytes, and the unused high bits of the
last byte are zero (and ignored when unpacking).

Eight codes of `bits` bits fill exactly `bits` bytes, so both directions work on groups of eight
codes held in 64-bit words and move the fields with SWAR shifts and masks (three steps each way)
instead of looping over codes or expanding to one byte per bit. 8 and 16 bits are plain views.
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


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack codes (uint8 for bits <= 8, uint16 above; values < 2**bits) into a uint8 array."""
    codes = np.ascontiguousarray(codes).reshape(-1)
    count = codes.size
    nbytes = packed_nbytes(count, bits)
    if bits == 8:
        return codes.astype(np.uint8, copy=False)
    if bits == 16:
        return codes.astype("<u2", copy=False).view(np.uint8)
    groups = -(-count // 8)
    if bits < 8:
        padded = np.zeros(groups * 8, np.uint8)
        padded[:count] = codes
        w = padded.view(_U64)  # eight 8-bit lanes, one code each
        # Squeeze lane pairs together: fields at (0, 8) -> (0, b), then (0, 16) -> (0, 2b),
        # then (0, 32) -> (0, 4b). Each step halves the number of fields per word.
        for lane, width in ((16, bits), (32, 2 * bits), (64, 4 * bits)):
            half = lane // 2
            low = _lanes(half, lane)
            w = (w & low) | ((w & ~low) >> np.uint64(half - width))
        return np.ascontiguousarray(w.view(np.uint8).reshape(groups, 8)[:, :bits]).reshape(-1)[
            :nbytes]
    padded = np.zeros(groups * 8, np.uint16)
    padded[:count] = codes
    w = padded.view(_U64)  # four 16-bit lanes per word, two words per group
    for lane, width in ((32, bits), (64, 2 * bits)):
        half = lane // 2
        low = _lanes(half, lane)
        w = (w & low) | ((w & ~low) >> np.uint64(half - width))
    w = w.reshape(groups, 2)  # each word now holds 4 codes in its low 4b bits (4b < 64)
    out = np.empty((groups, 2), _U64)
    out[:, 0] = w[:, 0] | (w[:, 1] << np.uint64(4 * bits))
    out[:, 1] = w[:, 1] >> np.uint64(64 - 4 * bits)
    return np.ascontiguousarray(out.view(np.uint8)[:, :bits]).reshape(-1)[:nbytes]


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
    if bits < 8:
        padded = np.zeros((groups, 8), np.uint8)
        padded[:, :bits] = _pad_groups(data, groups, bits)
        w = padded.view(_U64).reshape(-1)
        # Reverse of pack: spread fields (0, 4b) -> (0, 32), (0, 2b) -> (0, 16), (0, b) -> (0, 8).
        for lane, width in ((64, 4 * bits), (32, 2 * bits), (16, bits)):
            half = lane // 2
            low = _lanes(width, lane)
            w = (w & low) | ((w << np.uint64(half - width)) & (low << np.uint64(half)))
        return w.view(np.uint8)[:count]
    padded = np.zeros((groups, 16), np.uint8)
    padded[:, :bits] = _pad_groups(data, groups, bits)
    pair = padded.view(_U64)  # (groups, 2): 8b bits of codes across two words
    w = np.empty((groups, 2), _U64)
    field = 4 * bits
    w[:, 0] = pair[:, 0] & _mask(field)
    w[:, 1] = ((pair[:, 0] >> np.uint64(field)) | (pair[:, 1] << np.uint64(64 - field))) & _mask(
        field)
    w = w.reshape(-1)
    for lane, width in ((64, 2 * bits), (32, bits)):
        half = lane // 2
        low = _lanes(width, lane)
        w = (w & low) | ((w << np.uint64(half - width)) & (low << np.uint64(half)))
    return w.view("<u2")[:count]


def _pad_groups(data: np.ndarray, groups: int, bits: int) -> np.ndarray:
    """The payload as (groups, bits) bytes, zero-filling the tail of the last group."""
    full = groups * bits
    if data.size == full:
        return data.reshape(groups, bits)
    padded = np.zeros(full, np.uint8)
    padded[: data.size] = data
    return padded.reshape(groups, bits)
