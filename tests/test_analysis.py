"""LoRA section 7's measures (harness/analysis.py) on matrices whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from harness import analysis


def rows(*vectors_and_values, d=16):
    """An r x d matrix A whose right-singular vectors are the given unit axes, with the given singular values."""
    a = np.zeros((len(vectors_and_values), d))
    for k, (axis, s) in enumerate(vectors_and_values):
        a[k, axis] = s
    return a


def test_subspace_similarity_of_known_subspaces():
    a = rows((0, 2.0), (1, 1.0))  # top direction e0, then e1
    b = rows((0, 2.0), (2, 1.0))  # top direction e0, then e2
    assert analysis.subspace_similarity(a, b, 1, 1) == pytest.approx(1.0)  # the same top direction
    assert analysis.subspace_similarity(a, b, 2, 2) == pytest.approx(0.5)  # share 1 of 2 dimensions
    assert analysis.subspace_similarity(a, b, 1, 2) == pytest.approx(1.0)  # e0 lies inside span(e0, e2)
    c = rows((5, 3.0), (6, 1.0))
    assert analysis.subspace_similarity(a, c, 2, 2) == pytest.approx(0.0)  # orthogonal
    assert analysis.subspace_similarity(a, 7 * a, 2, 2) == pytest.approx(1.0)  # scale does not matter
    with pytest.raises(ValueError, match="within the ranks"):
        analysis.subspace_similarity(a, b, 3, 1)


def test_the_grid_is_every_i_j_and_random_matrices_give_the_chance_level():
    g = np.random.default_rng(1)
    a1, a2 = g.standard_normal((8, 64)), g.standard_normal((16, 64))
    grid = analysis.similarity_grid(a1, a2)
    assert grid.shape == (8, 16)
    for i, j in [(1, 1), (3, 7), (8, 16), (8, 2)]:
        assert grid[i - 1, j - 1] == pytest.approx(analysis.subspace_similarity(a1, a2, i, j))
    assert np.allclose(np.diag(analysis.similarity_grid(a1, a1)), 1.0)
    # two random subspaces of dimensions i and j in R^d overlap by max(i, j) / d on average
    rand = analysis.random_similarity((8, 1024), (64, 1024), seed=0)
    assert rand[7, 63] == pytest.approx(64 / 1024, rel=0.2) and rand[0, 0] < 0.05


def test_amplification_of_an_update_along_a_weak_and_a_strong_direction():
    w = np.zeros((8, 6))
    w[0, 0], w[1, 1], w[2, 2] = 10.0, 1.0, 0.5
    e = lambda n, k: np.eye(n)[:, [k]]  # noqa: E731
    weak = analysis.amplification(w, 3.0 * e(8, 1) @ e(6, 1).T, r=1)  # Delta W along W's second direction
    assert weak["W_on_dW"] == pytest.approx(1.0) and weak["W_on_W"] == pytest.approx(10.0)
    assert weak["dW_norm"] == pytest.approx(3.0) and weak["amplification"] == pytest.approx(3.0)
    strong = analysis.amplification(w, 5.0 * e(8, 0) @ e(6, 0).T, r=1)  # along W's top direction
    assert strong["W_on_dW"] == pytest.approx(10.0) and strong["amplification"] == pytest.approx(0.5)
    assert 0 <= weak["W_on_random"] <= weak["W_norm"]
    # random orthonormal U, V (r columns) keep r^2 / (d_out d_in) of ||W||^2 on average
    big = np.random.default_rng(3).standard_normal((40, 30))
    rnd = analysis.amplification(big, big, r=3, n_random=500)["W_on_random"]
    assert rnd == pytest.approx(np.sqrt(9 / (40 * 30)) * np.linalg.norm(big), rel=0.15)
    with pytest.raises(ValueError, match="Delta W is"):
        analysis.amplification(w, np.zeros((6, 8)), r=1)


def test_delta_w_and_how_far_a_moved():
    a, b = np.array([[1.0, 2.0]]), np.array([[3.0], [4.0]])
    assert np.allclose(analysis.delta_w(a, b, 0.5), [[1.5, 3.0], [2.0, 4.0]])
    assert analysis.moved(a, a) == 0.0 and analysis.moved(2 * a, a) == pytest.approx(1.0)
