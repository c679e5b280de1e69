"""Activation compression: error bounds, exact wire sizes, packing layout, edge cases, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeedge import quant
from pipeedge.quant import clipping

ALL_BITS = list(range(2, 17))


def _roundtrip(x: torch.Tensor, bits: int, clip: str = "",
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, np.ndarray, bytes]:
    data, params = quant.encode(x, kind="uniform", bits=bits, clip=clip)
    y = quant.decode(data, params, kind="uniform", bits=bits, shape=tuple(x.shape), dtype=dtype)
    affine = np.frombuffer(params, "<f4").reshape(-1, 2)
    return y, affine, data


def _assert_within_half_step(x: torch.Tensor, y: torch.Tensor, affine: np.ndarray) -> None:
    """|y - x| <= scale / 2 per sample, plus float32 rounding of the affine arithmetic."""
    n = affine.shape[0]
    x2 = x.reshape(n, -1).double()
    err = (y.reshape(n, -1).double() - x2).abs().amax(dim=1)
    scale = torch.from_numpy(affine[:, 0].astype(np.float64))
    magnitude = x2.abs().amax(dim=1)
    # float32 cannot resolve below its smallest subnormal, 2^-149, whatever the scale says
    eps = 1e-3 * scale + 4 * torch.finfo(torch.float32).eps * magnitude + 2.0**-149 * 2**16
    assert (err <= scale / 2 + eps).all(), (err, scale / 2, eps)


def _random_batch(gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Samples with very different offsets and spreads, as activations of a microbatch have."""
    n = shape[0]
    x = torch.randn(shape, generator=gen)
    spread = torch.exp(torch.randn(n, generator=gen) * 2).reshape((n,) + (1,) * (len(shape) - 1))
    offset = (torch.randn(n, generator=gen) * 10).reshape(spread.shape)
    return x * spread + offset


# --- round trip -----------------------------------------------------------------------------


@pytest.mark.parametrize("bits", ALL_BITS)
def test_uniform_error_within_half_step(bits: int) -> None:
    gen = torch.Generator().manual_seed(bits)
    for shape in [(4, 37, 5), (3, 7), (2, 1, 1, 9), (1, 1000)]:
        x = _random_batch(gen, shape)
        y, affine, _ = _roundtrip(x, bits)
        assert y.shape == x.shape and y.dtype == torch.float32
        _assert_within_half_step(x, y, affine)
        # params are exactly (max - min) / (2^bits - 1) and min, per sample
        x2 = x.reshape(shape[0], -1)
        lo, hi = x2.amin(1), x2.amax(1)
        assert np.array_equal(affine[:, 1], lo.numpy())
        expected_scale = ((hi.double() - lo.double()) / (2**bits - 1)).float().numpy()
        assert np.array_equal(affine[:, 0], expected_scale)


def test_uniform_hits_min_and_max_and_uses_all_codes() -> None:
    x = torch.linspace(-3, 5, 256).reshape(1, 256)
    y, _, data = _roundtrip(x, 8)
    assert data == bytes(range(256))  # 256 evenly spaced values map to codes 0..255
    assert y[0, 0] == -3 and abs(float(y[0, -1]) - 5) < 1e-6


@pytest.mark.parametrize("kind,torch_dtype", [("float16", torch.float16),
                                              ("bfloat16", torch.bfloat16)])
def test_half_kinds_equal_torch_casts(kind: str, torch_dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, generator=gen) * 1000
    x.view(-1)[:6] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e-8, 7e4, -0.0])
    for src in (x, x.double(), x.half(), x.bfloat16()):
        data, params = quant.encode(src, kind=kind)
        assert params == b"" and len(data) == 2 * x.numel()
        for out_dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            y = quant.decode(data, params, kind=kind, bits=0, shape=x.shape, dtype=out_dtype)
            expected = src.to(torch_dtype).to(out_dtype)
            torch.testing.assert_close(y, expected, rtol=0, atol=0, equal_nan=True)
            assert y.dtype == out_dtype


@pytest.mark.parametrize("clip", quant.CLIPS)
def test_encode_leaves_its_input_alone(clip: str) -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 40, 7, generator=gen)
    before = x.clone()
    for bits in (3, 8, 12):
        quant.encode(x, kind="uniform", bits=bits, clip=clip)
    assert torch.equal(x, before)


def test_half_kinds_scalar_and_odd_shapes() -> None:
    for kind in ("float16", "bfloat16"):
        for shape in [(), (1,), (3, 5, 1)]:
            x = torch.randn(shape)
            data, params = quant.encode(x, kind=kind)
            y = quant.decode(data, params, kind=kind, bits=0, shape=shape, dtype=torch.float32)
            assert y.shape == shape and torch.equal(y, x.to(quant._HALF_TORCH[kind]).float())


def test_uniform_other_dtypes_and_layouts() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, 10, generator=gen)
    y32, affine, data = _roundtrip(x, 6)
    for out_dtype in (torch.float16, torch.bfloat16, torch.float64):
        y, _, _ = _roundtrip(x, 6, dtype=out_dtype)
        assert y.dtype == out_dtype and torch.equal(y, y32.to(out_dtype))
    # non-contiguous input encodes like its contiguous copy
    xt = x.transpose(1, 2)
    assert quant.encode(xt, kind="uniform", bits=6) == quant.encode(xt.contiguous(),
                                                                  kind="uniform", bits=6)
    # half-precision input is quantized from its float32 value
    yh, affine_h, _ = _roundtrip(x.half(), 6)
    _assert_within_half_step(x.half().float(), yh, affine_h)
    # memoryview / bytearray payloads decode the same
    y_mv = quant.decode(memoryview(bytearray(data)), memoryview(affine.tobytes()),
                        kind="uniform", bits=6, shape=x.shape, dtype=torch.float32)
    assert torch.equal(y_mv, y32)
    y_mv += 1  # decoded tensors are writable and own their memory


# --- wire sizes and packing -----------------------------------------------------------------


@pytest.mark.parametrize("bits", ALL_BITS)
def test_payload_length_is_exact(bits: int) -> None:
    gen = torch.Generator().manual_seed(100 + bits)
    for shape in [(1,), (3,), (5, 1), (1, 7), (2, 3, 3), (8, 13), (3, 1001), ()]:
        x = torch.randn(shape, generator=gen)
        data, params = quant.encode(x, kind="uniform", bits=bits)
        numel = x.numel()
        assert len(data) == math.ceil(numel * bits / 8)
        assert len(data) == quant.encoded_nbytes(shape, kind="uniform", bits=bits)
        samples = shape[0] if shape else 1
        assert len(params) == 8 * samples == quant.params_nbytes(shape, "uniform")
    assert quant.encoded_nbytes((8, 197, 768), kind="float16") == 2 * 8 * 197 * 768
    assert quant.params_nbytes((8, 197, 768), "bfloat16") == 0


def test_pack_hand_checked_examples() -> None:
    assert quant.pack_codes([1, 2, 3], 2) == bytes([0b111001])
    # 3 bits: 5 | 3 << 3 | 7 << 6 = 0b1_1101_1101
    assert quant.pack_codes([5, 3, 7], 3) == bytes([0b11011101, 0b1])
    # 9 bits: 0x1FF | 1 << 9 = 0x3FF over ceil(18 / 8) = 3 bytes
    assert quant.pack_codes([0x1FF, 1], 9) == bytes([0xFF, 0x03, 0x00])
    assert quant.pack_codes([0xABCD, 0x1234], 16) == bytes([0xCD, 0xAB, 0x34, 0x12])
    assert quant.pack_codes([0xA, 0xB, 0xC], 4) == bytes([0xBA, 0x0C])
    assert list(quant.unpack_codes(bytes([0b111001]), 2, 3)) == [1, 2, 3]
    assert list(quant.unpack_codes(bytes([0b11011101, 0b1]), 3, 3)) == [5, 3, 7]
    assert list(quant.unpack_codes(bytes([0xFF, 0x03, 0x00]), 9, 2)) == [0x1FF, 1]
    # bits past the last code are padding and ignored
    assert list(quant.unpack_codes(bytes([0b11111001]), 2, 3)) == [1, 2, 3]


def _reference_pack(codes: np.ndarray, bits: int) -> bytes:
    """Bit-plane reference: one byte per bit, then numpy's LSB-first packbits."""
    as_bytes = codes.astype("<u2").view(np.uint8).reshape(-1, 2)
    planes = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :bits]
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


@pytest.mark.parametrize("bits", ALL_BITS)
def test_pack_matches_bitplane_reference(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for count in [0, 1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4099]:
        codes = rng.integers(0, 2**bits, count)
        packed = quant.pack_codes(codes, bits)
        assert packed == _reference_pack(codes, bits)
        assert np.array_equal(quant.unpack_codes(packed, bits, count), codes)
    top = np.full(11, 2**bits - 1)  # all ones must not spill past ceil(count * bits / 8)
    assert quant.pack_codes(top, bits) == _reference_pack(top, bits)


# --- edge cases -----------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 8, 13, 16])
@pytest.mark.parametrize("value", [0.0, 5.0, -0.1, 3.4e38, 1e-40])
def test_constant_samples_decode_exactly(bits: int, value: float) -> None:
    x = torch.full((3, 5, 7), value)
    y, affine, _ = _roundtrip(x, bits)
    assert torch.equal(y, x)
    assert (affine[:, 0] == 0).all()


@pytest.mark.parametrize("bits", [2, 5, 8, 16])
def test_mixed_constant_and_varying_samples(bits: int) -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 11, 3, generator=gen)
    x[1] = 5.0
    y, affine, _ = _roundtrip(x, bits)
    assert torch.equal(y[1], x[1])
    assert affine[1, 0] == 0 and affine[0, 0] > 0 and affine[2, 0] > 0
    _assert_within_half_step(x, y, affine)


@pytest.mark.parametrize("shape", [(1, 197, 768), (1,), (1, 1), (), (7,), (5, 3, 1), (3, 1001)])
def test_small_and_odd_shapes(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen)
    for bits in (3, 7, 8, 11, 16):
        y, affine, _ = _roundtrip(x, bits)
        assert y.shape == x.shape
        _assert_within_half_step(x, y, affine)
        if x.numel() == 1 or (shape and math.prod(shape[1:]) == 1):
            assert torch.equal(y, x)  # one value per sample is a constant sample


def test_ranges_wider_than_float32_max() -> None:
    x = torch.tensor([[-3e38, -1.0, 0.0, 1e38, 3e38], [1.0, 2.0, 3.0, 4.0, 5.0]])
    for bits in ALL_BITS:
        y, affine, _ = _roundtrip(x, bits)
        assert torch.isfinite(y).all()
        _assert_within_half_step(x, y, affine)


@pytest.mark.parametrize("shape", [(0,), (0, 5), (3, 0), (2, 0, 4)])
def test_empty_tensors(shape: tuple[int, ...]) -> None:
    for kind in quant.KINDS:
        data, params = quant.encode(torch.empty(shape), kind=kind, bits=4)
        assert len(data) == 0
        assert len(params) == quant.params_nbytes(shape, kind)
        y = quant.decode(data, params, kind=kind, bits=4, shape=shape, dtype=torch.float32)
        assert y.shape == shape


def test_nonfinite_samples_decode_as_nan_and_spare_the_rest() -> None:
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(4, 50, generator=gen)
    x[1, 3] = float("nan")
    x[2, 7] = float("inf")
    x[3, 0] = -float("inf")
    y, affine, _ = _roundtrip(x, 4)
    assert torch.isnan(y[1:]).all()
    assert np.isnan(affine[1:]).all()
    _assert_within_half_step(x[:1], y[:1], affine[:1])
    for clip in ("laplace", "gelu"):
        y, _, _ = _roundtrip(x, 4, clip=clip)
        assert torch.isnan(y[1:]).all() and not torch.isnan(y[0]).any()


# --- clipping -------------------------------------------------------------------------------


def _mse(x: torch.Tensor, bits: int, clip: str) -> float:
    y, _, _ = _roundtrip(x, bits, clip=clip)
    return float(((y - x) ** 2).mean())


@pytest.mark.parametrize("bits", [3, 4])
def test_laplace_clipping_lowers_mse_on_heavy_tails(bits: int) -> None:
    torch.manual_seed(bits)
    x = torch.distributions.Laplace(torch.tensor(0.3), torch.tensor(1.0)).sample((8, 197 * 16))
    plain, clipped = _mse(x, bits, ""), _mse(x, bits, "laplace")
    assert clipped < 0.7 * plain, (plain, clipped)


@pytest.mark.parametrize("bits,ratio", [(3, 0.7), (4, 0.9)])
def test_gelu_clipping_lowers_mse_on_post_gelu_activations(bits: int, ratio: float) -> None:
    torch.manual_seed(bits)
    pre = torch.distributions.Laplace(torch.tensor(0.0), torch.tensor(1.0)).sample((8, 3072))
    x = torch.nn.functional.gelu(pre)
    plain, clipped = _mse(x, bits, ""), _mse(x, bits, "gelu")
    assert clipped < ratio * plain, (plain, clipped)
    # the symmetric rule misreads the one-sided shape and clips the upper tail far too hard
    assert _mse(x, bits, "laplace") > plain > clipped
    y, affine, _ = _roundtrip(x, bits, clip="gelu")
    assert np.array_equal(affine[:, 1], x.amin(1).numpy())  # lower end is never clipped
    assert (y.amax(1) < x.amax(1)).all()  # the upper tail is


def test_gelu_rule_matches_its_documented_formula() -> None:
    """alpha = lo + b W(12 p 4^M e^((u - lo)/b)), u = mean(x | x > 0), b = mean(x - u | x > u)."""
    torch.manual_seed(11)
    x = torch.nn.functional.gelu(torch.distributions.Laplace(0.0, 1.5).sample((2, 4000)))
    bits = 4
    _, affine, _ = _roundtrip(x, bits, clip="gelu")
    for row, (scale, shift) in zip(x.double().numpy(), affine, strict=True):
        lo = row.min()
        u = row[row > 0].mean()
        tail = row[row > u] - u
        b, p = tail.mean(), tail.size / row.size
        k = 12 * p * 4.0**bits * math.exp((u - lo) / b)
        t = math.log(k)
        for _ in range(50):  # Newton for t e^t = k
            t -= (t + math.log(t) - math.log(k)) / (1 + 1 / t)
        alpha = min(lo + b * t, row.max())
        assert shift == pytest.approx(lo, abs=1e-6)
        assert shift + scale * (2**bits - 1) == pytest.approx(alpha, rel=1e-4)


def test_clipping_keeps_values_inside_the_clip_range() -> None:
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((4, 5000))
    y, affine, _ = _roundtrip(x, 3, clip="laplace")
    lo, hi = affine[:, 1], affine[:, 1] + affine[:, 0] * 7
    assert (y.amin(1).numpy() >= lo - 1e-6).all() and (y.amax(1).numpy() <= hi + 1e-5).all()
    mu = x.double().mean(1)
    b = (x.double() - mu[:, None]).abs().mean(1)
    alpha = quant.laplace_alpha(3) * b
    np.testing.assert_allclose(lo, torch.maximum(x.amin(1).double(), mu - alpha), rtol=1e-5)
    np.testing.assert_allclose(hi, torch.minimum(x.amax(1).double(), mu + alpha), rtol=1e-5)
    inside = (x >= torch.tensor(lo)[:, None]) & (x <= torch.tensor(hi)[:, None])
    err = (y - x).abs()[inside]
    assert float(err.max()) <= float(affine[:, 0].max()) / 2 * 1.001


def test_aciq_constants_follow_the_paper() -> None:
    paper = {2: 2.83, 3: 3.89, 4: 5.03, 5: 6.20, 6: 7.41, 7: 8.64, 8: 9.89}
    for bits, alpha in paper.items():
        assert quant.laplace_alpha(bits) == alpha
        assert abs(clipping.solve_laplace_alpha(bits) - alpha) < 0.01
    extrapolated = [quant.laplace_alpha(b) for b in range(8, 17)]
    steps = np.diff(extrapolated)
    assert (steps > 1.2).all() and (steps < math.log(4)).all()  # approaches ln 4 per bit


# --- errors ---------------------------------------------------------------------------------

X = torch.zeros(2, 3)


@pytest.mark.parametrize("call,match", [
    (lambda: quant.encode(X, kind="int4"), r"kind 'int4' is unknown; expected one of"),
    (lambda: quant.decode(b"", b"", kind="raw", bits=8, shape=(0,), dtype=torch.float32),
     r"kind 'raw' is unknown"),
    (lambda: quant.encode(X, kind="uniform", bits=1), r"bits 1 is out of range; expected 2\.\.16"),
    (lambda: quant.encode(X, kind="uniform", bits=17), r"bits 17 is out of range; expected 2\.\.16"),
    (lambda: quant.encode(X, kind="uniform", bits="8"), r"bits '8' is not an integer"),
    (lambda: quant.encoded_nbytes((2, 3), kind="uniform", bits=0), r"bits 0 is out of range"),
    (lambda: quant.encode(X, kind="uniform", clip="tanh"), r"clip 'tanh' is unknown; expected"),
    (lambda: quant.encode(X, kind="float16", clip="laplace"), r"clip 'laplace' applies only to"),
    (lambda: quant.encode(X.long(), kind="uniform"), r"tensor dtype torch.int64 cannot use"),
    (lambda: quant.decode(bytes(4), bytes(16), kind="uniform", bits=4, shape=(2, 3),
                          dtype=torch.float32), r"data has 4 bytes; expected 3 for shape \[2, 3\]"),
    (lambda: quant.decode(bytes(3), bytes(15), kind="uniform", bits=4, shape=(2, 3),
                          dtype=torch.float32), r"params has 15 bytes; expected 16"),
    (lambda: quant.decode(bytes(11), b"", kind="float16", bits=0, shape=(2, 3),
                          dtype=torch.float32), r"data has 11 bytes; expected 12"),
    (lambda: quant.decode(bytes(12), bytes(8), kind="bfloat16", bits=0, shape=(2, 3),
                          dtype=torch.float32), r"params has 8 bytes; expected 0"),
    (lambda: quant.decode(bytes(3), bytes(16), kind="uniform", bits=4, shape=(2, -3),
                          dtype=torch.float32), r"shape \[2, -3\] has a negative dimension"),
    (lambda: quant.decode(bytes(3), bytes(16), kind="uniform", bits=4, shape=(2, 3),
                          dtype=torch.int32), r"dtype torch.int32 cannot be decoded"),
    (lambda: quant.decode("abc", bytes(16), kind="uniform", bits=4, shape=(2, 3),
                          dtype=torch.float32), r"data is a str; expected bytes"),
    (lambda: quant.pack_codes([4], 2), r"codes range \[4, 4\] does not fit 2 bits"),
    (lambda: quant.unpack_codes(bytes(3), 3, 3), r"data has 3 bytes; expected 2 for 3 codes"),
])
def test_bad_input_raises_value_error_naming_it(call, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_data_length_error_fires_before_params_error() -> None:
    with pytest.raises(ValueError, match=r"^data has 5 bytes; expected 3"):
        quant.decode(bytes(5), bytes(1), kind="uniform", bits=4, shape=(2, 3), dtype=torch.float32)


def test_kind_names_ignore_case() -> None:
    data, params = quant.encode(X, kind="UNIFORM", bits=4)
    assert quant.decode(data, params, kind="Uniform", bits=4, shape=(2, 3),
                        dtype=torch.float32).shape == (2, 3)


# --- property tests -------------------------------------------------------------------------


def _check_property(x: torch.Tensor, bits: int, clip: str) -> None:
    y, affine, data = _roundtrip(x, bits, clip=clip)
    assert y.shape == x.shape
    assert len(data) == math.ceil(x.numel() * bits / 8)
    n = affine.shape[0]
    scale, shift = affine[:, 0].astype(np.float64), affine[:, 1].astype(np.float64)
    hi = shift + scale * (2**bits - 1)
    y2 = y.reshape(n, -1).double().numpy()
    slack = 1e-5 * (np.abs(shift) + np.abs(hi)) + 1e-30
    assert (y2 >= (shift - slack)[:, None]).all() and (y2 <= (hi + slack)[:, None]).all()
    if clip == "":
        _assert_within_half_step(x, y, affine)


def test_property_seeded_random() -> None:
    """Random shapes, magnitudes, bit widths and clips; runs without hypothesis."""
    rng = np.random.default_rng(2024)
    for _ in range(150):
        ndim = int(rng.integers(1, 4))
        shape = tuple(int(d) for d in rng.integers(1, 9, ndim))
        magnitude = 10.0 ** rng.uniform(-20, 20)
        values = rng.standard_normal(shape) * magnitude + rng.standard_normal() * magnitude
        x = torch.from_numpy(values.astype(np.float32))
        _check_property(x, int(rng.integers(2, 17)), str(rng.choice(quant.CLIPS)))


def test_property_hypothesis() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    floats = st.floats(allow_nan=False, allow_infinity=False, width=32)
    arrays = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                        elements=floats)

    @hypothesis.settings(max_examples=150, deadline=None)
    @hypothesis.given(arrays, st.integers(2, 16), st.sampled_from(quant.CLIPS))
    def check(values: np.ndarray, bits: int, clip: str) -> None:
        _check_property(torch.from_numpy(values.copy()), bits, clip)

    check()


# --- per-row params (granularity "row": one (scale, shift) per row of the last dimension) -----


def _rows(shape: tuple[int, ...]) -> int:
    return math.prod(shape[:-1]) if shape else 1


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 11, 16])
def test_per_row_params_are_exact_and_error_within_half_step(bits: int) -> None:
    gen = torch.Generator().manual_seed(bits)
    x = _random_batch(gen, (3, 17, 24))
    x[1, 5] *= 1000  # one outlier token: per row it only coarsens its own row
    data, params = quant.encode(x, kind="uniform", bits=bits, granularity="row")
    y = quant.decode(data, params, kind="uniform", bits=bits, shape=(3, 17, 24),
                     dtype=torch.float32, granularity="row")
    affine = np.frombuffer(params, "<f4").reshape(-1, 2)
    assert affine.shape == (3 * 17, 2)
    rows = x.reshape(-1, 24).double()
    lo, hi = rows.amin(dim=1), rows.amax(dim=1)
    assert np.array_equal(affine[:, 1], lo.float().numpy())
    expected_scale = ((hi - lo) / (2**bits - 1)).float().numpy()
    assert np.allclose(affine[:, 0], expected_scale, rtol=1e-6, atol=0)
    _assert_within_half_step(x, y, affine)  # checks every row against its own scale
    # bounds: every decoded row stays within [min, max] of that row (up to float32 rounding)
    y2 = y.reshape(-1, 24).double()
    slack = 1e-5 * (lo.abs() + hi.abs())[:, None]
    assert (y2 >= lo[:, None] - slack).all() and (y2 <= hi[:, None] + slack).all()
    # the outlier token no longer sets the step of the other tokens of its sample
    per_sample = np.frombuffer(quant.encode(x, kind="uniform", bits=bits)[1], "<f4")
    assert affine[:, 0].reshape(3, 17)[1, 0] < per_sample.reshape(3, 2)[1, 0] / 100


@pytest.mark.parametrize("clip", quant.CLIPS)
@pytest.mark.parametrize("shape", [(2, 5, 8), (4, 7), (9,), (), (2, 3, 4, 5)])
def test_per_row_equals_per_sample_of_the_rows(shape: tuple[int, ...], clip: str) -> None:
    """Per row is per sample of the [rows, last dim] view: same codes, same params, clipping
    statistics per row."""
    x = torch.nn.functional.gelu(torch.randn(shape, generator=torch.Generator().manual_seed(3)))
    got = quant.encode(x, kind="uniform", bits=4, clip=clip, granularity="row")
    view = x.reshape(_rows(shape), -1)
    assert got == quant.encode(view, kind="uniform", bits=4, clip=clip)
    assert len(got[1]) == 8 * _rows(shape) == quant.params_nbytes(shape, "uniform", "row")
    y = quant.decode(*got, kind="uniform", bits=4, shape=shape, dtype=torch.float32,
                     granularity="row")
    assert y.shape == x.shape
    ref = quant.decode(*got, kind="uniform", bits=4, shape=view.shape, dtype=torch.float32)
    assert torch.equal(y.reshape(view.shape), ref)


@pytest.mark.parametrize("bits", [3, 8])
def test_per_row_wire_bytes_are_packed_codes_plus_8_per_row(bits: int) -> None:
    shape = (4, 33, 10)
    data, params = quant.encode(torch.randn(shape), kind="uniform", bits=bits, granularity="row")
    assert len(data) == math.ceil(4 * 33 * 10 * bits / 8) == quant.encoded_nbytes(
        shape, kind="uniform", bits=bits)
    assert len(params) == 8 * 4 * 33


def test_per_row_constant_and_nonfinite_rows() -> None:
    x = torch.randn(2, 4, 6)
    x[0, 1] = 3.25          # constant row: decoded exactly
    x[1, 2] = 0.0           # all-zero row
    x[1, 3, 2] = float("nan")  # one bad row: all-NaN, the other rows unaffected
    data, params = quant.encode(x, kind="uniform", bits=5, granularity="row")
    y = quant.decode(data, params, kind="uniform", bits=5, shape=(2, 4, 6), dtype=torch.float32,
                     granularity="row")
    assert torch.equal(y[0, 1], x[0, 1]) and torch.equal(y[1, 2], x[1, 2])
    assert torch.isnan(y[1, 3]).all()
    good = ~torch.isnan(y)
    assert good.sum() == 2 * 4 * 6 - 6
    affine = np.frombuffer(params, "<f4").reshape(2, 4, 2)
    assert affine[0, 1, 0] == 0 and affine[0, 1, 1] == np.float32(3.25)
    assert ((y - x).abs()[good] <= 0.3).all()


def test_per_row_empty_shapes() -> None:
    for shape, rows in [((0, 5, 4), 0), ((3, 0), 3), ((2, 3, 0), 6), ((0,), 1)]:
        data, params = quant.encode(torch.empty(shape), kind="uniform", bits=4,
                                    granularity="row")
        assert (data, len(params)) == (b"", 8 * rows)
        y = quant.decode(data, params, kind="uniform", bits=4, shape=shape, dtype=torch.float32,
                         granularity="row")
        assert y.shape == shape


@pytest.mark.parametrize("call,match", [
    (lambda: quant.decode(bytes(3), bytes(16), kind="uniform", bits=4, shape=(2, 3, 1),
                          dtype=torch.float32, granularity="row"),
     (r"params has 16 bytes; expected 48 for encoding 'uniform' and shape \[2, 3, 1\] "
      r"\(8 per row of the last dimension\)")),
    (lambda: quant.decode(bytes(3), bytes(48), kind="uniform", bits=4, shape=(2, 3, 1),
                          dtype=torch.float32),
     r"params has 48 bytes; expected 16 .*\(8 per sample along dim 0\)"),
    (lambda: quant.decode(bytes(4), bytes(48), kind="uniform", bits=4, shape=(2, 3, 1),
                          dtype=torch.float32, granularity="row"), r"data has 4 bytes; expected 3"),
    (lambda: quant.encode(X, kind="uniform", granularity="token"),
     r"granularity 'token' is unknown; expected one of \['sample', 'row'\]"),
    (lambda: quant.encode(X, kind="float16", granularity="row"),
     r"granularity 'row' applies only to uniform"),
    (lambda: quant.decode(bytes(12), b"", kind="bfloat16", bits=0, shape=(2, 3),
                          dtype=torch.float32, granularity="row"), r"applies only to uniform"),
    (lambda: quant.params_nbytes((2, 3), "uniform", "column"), r"granularity 'column'"),
])
def test_per_row_bad_input_raises_value_error_naming_it(call, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_per_row_property_seeded_random() -> None:
    rng = np.random.default_rng(7)
    for _ in range(60):
        shape = tuple(int(d) for d in rng.integers(1, 7, int(rng.integers(1, 4))))
        magnitude = 10.0 ** rng.uniform(-10, 10)
        x = torch.from_numpy((rng.standard_normal(shape) * magnitude).astype(np.float32))
        bits, clip = int(rng.integers(2, 17)), str(rng.choice(quant.CLIPS))
        data, params = quant.encode(x, kind="uniform", bits=bits, clip=clip, granularity="row")
        y = quant.decode(data, params, kind="uniform", bits=bits, shape=shape,
                         dtype=torch.float32, granularity="row")
        affine = np.frombuffer(params, "<f4").reshape(-1, 2)
        assert affine.shape[0] == _rows(shape) and len(data) == math.ceil(x.numel() * bits / 8)
        if clip == "":
            _assert_within_half_step(x, y, affine)
