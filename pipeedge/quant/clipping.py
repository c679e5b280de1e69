"""Per-sample clipping ranges for uniform quantization (ACIQ, Banner et al. 2019).

With few bits, spending the code range on rare outliers makes every other value coarser. ACIQ
models the values as Laplace(mu, b) and picks the clipping value alpha that minimises
clipping noise + quantization noise. For a two-sided Laplace tail, clipping at mu +- alpha costs
2 b^2 e^(-alpha/b) and quantizing [mu - alpha, mu + alpha] with 2^M levels costs
alpha^2 / (3 * 4^M); the optimum t = alpha / b solves t e^t = 3 * 4^M. The paper tabulates
t for 2..8 bits (2.83 ... 9.89, reproduced by that equation); beyond 8 bits we solve the same
equation, so the constants keep growing by about ln 4 per bit.

Rules (all statistics per sample, i.e. over every dimension but dim 0):

* ``"laplace"``: mu = mean(x), b = mean(|x - mu|), range = [mu - c(M) b, mu + c(M) b]
  intersected with [min, max].
* ``"gelu"``: post-GeLU activations are one-sided (bounded below by GeLU's minimum, about -0.17,
  with a long positive tail), so the lower end stays at the sample minimum and only the upper
  tail is clipped. The positive values are modelled as an exponential tail with scale
  b+ = mean(x | x > 0); with p the fraction of positive values, clipping at alpha costs
  p * 2 b+^2 e^(-alpha/b+) while the quantization step now spreads over [~0, alpha] only,
  costing alpha^2 / (12 * 4^M). The optimum t = alpha / b+ solves t e^t = 12 p 4^M (for p = 1
  this is the two-sided constant of M + 1 bits: one tail gets all the levels). The upper end is
  min(max, t * b+); samples without positive values are not clipped.
"""

from __future__ import annotations

import torch

CLIPS = ("", "laplace", "gelu")

# alpha / b for a Laplace distribution, from Banner et al. 2019 (Table/Eq. for 2..8 bits).
_PAPER_ALPHA = {2: 2.83, 3: 3.89, 4: 5.03, 5: 6.20, 6: 7.41, 7: 8.64, 8: 9.89}


def _solve_t_exp_t(k: torch.Tensor) -> torch.Tensor:
    """Positive root of t * e^t = k (Lambert W on the principal branch), elementwise, k > 0."""
    log_k = torch.log(k)
    t = torch.log1p(k)  # close for both small (t ~ k) and large (t ~ ln k) k
    for _ in range(30):  # Newton on f(t) = t + ln t - ln k, monotone and concave: converges fast
        t = t - (t + torch.log(t) - log_k) / (1 + 1 / t)
        t = t.clamp_min(1e-12)
    return t


def solve_laplace_alpha(bits: int) -> float:
    """Root of t e^t = 3 * 4^bits: ACIQ's optimum for a two-sided Laplace, in units of b."""
    return float(_solve_t_exp_t(torch.tensor(3.0 * 4.0**bits, dtype=torch.float64)))


# The paper's values where it gives them, the same equation beyond (9..16 bits: 11.16 ... 20.27).
LAPLACE_ALPHA: dict[int, float] = {b: _PAPER_ALPHA.get(b) or solve_laplace_alpha(b)
                                   for b in range(2, 17)}


def laplace_alpha(bits: int) -> float:
    """ACIQ's optimal clipping value in units of the Laplace scale b, for `bits`-bit codes."""
    return LAPLACE_ALPHA[bits]


def clip_range(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *, bits: int,
               clip: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Narrow the per-sample [lo, hi] (each shape (N,)) of `x` (shape (N, M)) per `clip`."""
    if clip == "":
        return lo, hi
    if clip == "laplace":
        mu = torch.minimum(torch.maximum(x.mean(dim=1), lo), hi)  # guard float drift of mean
        b = (x - mu[:, None]).abs_().mean(dim=1)
        alpha = b * laplace_alpha(bits)
        new_lo = torch.maximum(lo, mu - alpha)
        new_hi = torch.minimum(hi, mu + alpha)
        return new_lo, torch.maximum(new_hi, new_lo)
    if clip == "gelu":
        positive = torch.relu(x)
        n_pos = torch.count_nonzero(positive, dim=1).to(torch.float64)
        b_pos = positive.sum(dim=1, dtype=torch.float64) / n_pos.clamp_min(1)
        p = n_pos / max(x.shape[1], 1)
        k = (12.0 * 4.0**bits) * p.clamp_min(1.0 / max(x.shape[1], 1))
        t = _solve_t_exp_t(k)
        alpha = (t * b_pos).to(hi.dtype)
        new_hi = torch.where(n_pos > 0, torch.minimum(hi, alpha), hi)
        return lo, torch.maximum(new_hi, lo)
    raise ValueError(f"clip '{clip}' is unknown; expected one of {list(CLIPS)}")

