"""What the adapters learned: the LoRA paper's section 7 measures, on saved adapters (exact linear algebra).

Shapes as peft stores them: A (lora_A.weight) is r x d_in, B (lora_B.weight) is d_out x r, and the update is
Delta W = scale * B A (d_out x d_in), scale = alpha / r (alpha / sqrt(r) with rsLoRA).

- `subspace_similarity(A1, A2, i, j)` (Figure 3, eq. in section 7.2): phi = ||U1_i^T U2_j||_F^2 / min(i, j), where
  U_i holds the top-i right-singular vectors of A (columns in R^{d_in}); 1 when one subspace contains the other,
  0 when they are orthogonal.
- `similarity_grid` (the heatmaps): phi for every i <= r1, j <= r2.
- `random_similarity`: the same measure between two random Gaussian matrices of the same shapes (the baseline the
  paper draws in Figure 4).
- `amplification` (Table 7): ||U^T W V||_F for U, V the top-r left/right singular vectors of Delta W, of W, and of
  a random matrix, beside ||Delta W||_F and the factor ||Delta W||_F / ||U^T W V||_F (Delta W's own directions).
- `moved`: ||A - A0||_F / ||A0||_F, how far training took A from its initialisation (when it barely moved, the
  similarities measure the initialisation, not learning).
"""

from __future__ import annotations

import numpy as np


def _right_singular(a: np.ndarray) -> np.ndarray:
    """Columns: the right-singular vectors of `a`, by decreasing singular value (d_in x rank)."""
    _, _, vt = np.linalg.svd(np.asarray(a, dtype=np.float64), full_matrices=False)
    return vt.T


def subspace_similarity(a1: np.ndarray, a2: np.ndarray, i: int, j: int) -> float:
    """phi(A1, A2, i, j) = ||U1_i^T U2_j||_F^2 / min(i, j) over the top-i / top-j right-singular vectors."""
    u1, u2 = _right_singular(a1), _right_singular(a2)
    if not (1 <= i <= u1.shape[1] and 1 <= j <= u2.shape[1]):
        raise ValueError(f"i={i}, j={j}: they must be within the ranks {u1.shape[1]} and {u2.shape[1]}")
    m = u1[:, :i].T @ u2[:, :j]
    return float(np.sum(m * m) / min(i, j))


def similarity_grid(a1: np.ndarray, a2: np.ndarray) -> np.ndarray:
    """phi(A1, A2, i, j) for i = 1..r1 (rows) and j = 1..r2 (columns)."""
    u1, u2 = _right_singular(a1), _right_singular(a2)
    sq = (u1.T @ u2) ** 2  # r1 x r2
    cum = sq.cumsum(axis=0).cumsum(axis=1)  # cum[i-1, j-1] = ||U1_i^T U2_j||_F^2
    i = np.arange(1, sq.shape[0] + 1)[:, None]
    j = np.arange(1, sq.shape[1] + 1)[None, :]
    return cum / np.minimum(i, j)


def random_similarity(shape1: tuple[int, int], shape2: tuple[int, int], seed: int = 0) -> np.ndarray:
    """`similarity_grid` of two random Gaussian matrices of these shapes."""
    g = np.random.default_rng(seed)
    return similarity_grid(g.standard_normal(shape1), g.standard_normal(shape2))


def delta_w(a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    return float(scale) * (np.asarray(b, dtype=np.float64) @ np.asarray(a, dtype=np.float64))


def _projection_norm(w: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
    return float(np.linalg.norm(u.T @ w @ v))


def amplification(w: np.ndarray, dw: np.ndarray, r: int, seed: int = 0, n_random: int = 1) -> dict:
    """LoRA Table 7 for one weight: ||U^T W V||_F with U, V from Delta W, from W, and random (each r columns; the
    mean over `n_random` random orthonormal pairs), ||W||_F, ||Delta W||_F and the amplification factor
    ||Delta W||_F / ||U^T W V||_F (U, V from Delta W)."""
    w = np.asarray(w, dtype=np.float64)
    dw = np.asarray(dw, dtype=np.float64)
    if w.shape != dw.shape:
        raise ValueError(f"W is {w.shape} but Delta W is {dw.shape}")
    ud, _, vtd = np.linalg.svd(dw, full_matrices=False)
    uw, _, vtw = np.linalg.svd(w, full_matrices=False)
    g = np.random.default_rng(seed)
    on_random = []
    for _ in range(n_random):
        ur, _ = np.linalg.qr(g.standard_normal((w.shape[0], r)))
        vr, _ = np.linalg.qr(g.standard_normal((w.shape[1], r)))
        on_random.append(_projection_norm(w, ur, vr))
    on_dw = _projection_norm(w, ud[:, :r], vtd[:r].T)
    dnorm = float(np.linalg.norm(dw))
    return {"r": r, "W_norm": float(np.linalg.norm(w)), "dW_norm": dnorm,
            "W_on_dW": on_dw, "W_on_W": _projection_norm(w, uw[:, :r], vtw[:r].T),
            "W_on_random": float(np.mean(on_random)),
            "amplification": dnorm / on_dw if on_dw > 0 else float("inf")}


def moved(a: np.ndarray, a0: np.ndarray) -> float:
    """||A - A0||_F / ||A0||_F."""
    a, a0 = np.asarray(a, dtype=np.float64), np.asarray(a0, dtype=np.float64)
    return float(np.linalg.norm(a - a0) / np.linalg.norm(a0))
