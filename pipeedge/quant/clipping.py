"""Per-sample clipping ranges for uniform quantization (ACIQ, Banner et al. 2019).

With few bits, spending the code range on rare outliers makes every other value coarser. ACIQ
models the values as Laplace(mu, b) and picks the clipping value alpha that minimises
clipping noise + quantization noise. For a two-sided Laplace tail, clipping at mu +- alpha costs
2 b^2 e^(-alpha/b) and quantizing [mu - alpha, mu + alpha] with 2^M levels costs
alpha^2 / (3 * 4^M); the optimum t = alpha / b solves t e^t = 3 * 4^M. The paper tabulates
t for 2..8 bits (2.83 ... 9.89, reproduced by that equation); beyond 8 bits we solve the same
equation, so the constants keep growing by about ln 4 per bit.

Rules (all statistics per sample, i.e. over every dimension but dim 0; or per row of the last
dimension with per-row granularity):

* ``"laplace"``: mu = mean(x), b = mean(|x - mu|), range = [mu - c(M) b, mu + c(M) b]
  intersected with [min, max].
* ``"gelu"``: post-GeLU activations are one-sided (bounded below by GeLU's minimum, about -0.17,
  with a long positive tail), so the lower end stays at the sample minimum lo and only the upper
  tail is clipped. The tail is modelled as exponential beyond the threshold u = mean(x | x > 0),
  with scale b = mean(x - u | x > u) (the mean excess, which for an exponential tail is b at any
  threshold; starting at u rather than 0 keeps GeLU's bend near zero out of the estimate). With
  p the fraction of values above u, clipping at alpha costs p 2 b^2 e^(-(alpha - u)/b) and
  quantizing [lo, alpha] costs (alpha - lo)^2 / (12 * 4^M); setting the derivative to zero gives
  alpha = lo + b W(12 p 4^M e^((u - lo)/b)), W being Lambert's W. The upper end is
  min(max, alpha); samples without values above u are not clipped. (For lo = u = 0 and p = 1
  this is the two-sided constant of M + 1 bits: one tail gets all the levels.) On GeLU of
  Laplace, Gaussian and Student-t inputs its MSE is 1.3x that of the best upper clip (geometric
  mean over 2-8 bits), where no clipping is 1.4-4.7x off at 2-4 bits; measuring the tail from
  u = 0 instead was 1.6x.

Caveat: both rules assume exponential tails. On power-law tails (e.g. Student-t with 3 degrees of
freedom) they clip far too hard at 6+ bits and raise the error; use them for 2-5 bits.
"""

from __future__ import annotations

import math

import numpy as np

CLIPS = ("", "laplace", "gelu")

# alpha / b for a Laplace distribution, from Banner et al. 2019 (Table/Eq. for 2..8 bits).
_PAPER_ALPHA = {2: 2.83, 3: 3.89, 4: 5.03, 5: 6.20, 6: 7.41, 7: 8.64, 8: 9.89}


def _solve_t_exp_t(log_k: np.ndarray | np.float64) -> np.ndarray:
    """Positive root of t * e^t = k (Lambert W, principal branch) given ln k, elementwise.

    Taking ln k keeps huge arguments (e^((u - lo)/b) with a tiny b) finite.
    """
    log_k = np.asarray(log_k, dtype=np.float64)
    t: np.ndarray = np.logaddexp(0.0, log_k)  # ln(1 + k): close for small (~k) and large (~ln k) k
    for _ in range(30):  # Newton on f(t) = t + ln t - ln k: monotone and concave, converges fast
        t = np.maximum(t - (t + np.log(t) - log_k) / (1 + 1 / t), 1e-30)
    return t


def solve_laplace_alpha(bits: int) -> float:
    """Root of t e^t = 3 * 4^bits: ACIQ's optimum for a two-sided Laplace, in units of b."""
    return float(_solve_t_exp_t(np.float64(math.log(3.0) + bits * math.log(4.0))))


# The paper's values where it gives them, the same equation beyond (9..16 bits: 11.16 ... 20.27).
LAPLACE_ALPHA: dict[int, float] = {b: _PAPER_ALPHA.get(b) or solve_laplace_alpha(b)
                                   for b in range(2, 17)}


def laplace_alpha(bits: int) -> float:
    """ACIQ's optimal clipping value in units of the Laplace scale b, for `bits`-bit codes."""
    return LAPLACE_ALPHA[bits]


def clip_range(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, *, bits: int, clip: str,
               scratch: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Narrow the per-sample [lo, hi] (float32, shape (N,)) of `x` (float32, (N, M)) per `clip`.

    `scratch` (like `x`) is overwritten if given: fresh multi-MB temporaries cost a page fault
    per 4 KiB, about as much as the arithmetic itself.
    """
    if clip == "":
        return lo, hi
    if scratch is None:
        scratch = np.empty_like(x)
    if clip == "laplace":
        mu = np.clip(x.mean(axis=1), lo, hi)  # guard float drift of the mean
        b = np.abs(np.subtract(x, mu[:, None], out=scratch), out=scratch).mean(axis=1)
        alpha = b * np.float32(laplace_alpha(bits))
        new_lo = np.maximum(lo, mu - alpha)
        return new_lo, np.maximum(np.minimum(hi, mu + alpha), new_lo)
    if clip == "gelu":
        m = max(x.shape[1], 1)
        u = _mean_of_positive(np.maximum(x, 0, out=scratch))[0].astype(np.float32)
        b, n_tail = _mean_of_positive(np.maximum(np.subtract(x, u[:, None], out=scratch), 0,
                                                 out=scratch))
        b = b.astype(np.float64)
        usable = (n_tail > 0) & (b > 0)
        b = np.where(usable, b, 1.0)
        lo64 = lo.astype(np.float64)
        log_k = (math.log(12.0) + bits * math.log(4.0) + np.log(np.maximum(n_tail, 1) / m)
                 + (u - lo64) / b)
        alpha = (lo64 + b * _solve_t_exp_t(log_k)).astype(np.float32)
        new_hi = np.where(usable, np.minimum(hi, alpha), hi)
        return lo, np.maximum(new_hi, lo)
    raise ValueError(f"clip '{clip}' is unknown; expected one of {list(CLIPS)}")


def _mean_of_positive(nonneg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean of the positive values, their count) per row of a non-negative array; mean 0 for
    rows without any. (count_nonzero, not sign(): numpy's float32 sign is ~15x slower.)"""
    total = nonneg.sum(axis=1)
    count = np.count_nonzero(nonneg, axis=1)
    return total / np.maximum(count, 1), count
