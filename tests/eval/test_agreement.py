"""Agreement metrics against values worked out by hand (and against scipy where it has them)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsa.errors import ConfigError
from sparsa.eval.agreement import (
    average_ranks,
    binarize,
    cohen_kappa,
    confusion_matrix,
    kendall_tau,
    krippendorff_alpha,
    label_agreement,
    spearman_rho,
)


def test_cohen_kappa_by_hand():
    # Confusion [[1, 1], [0, 2]]: p_o = 3/4; marginals (1/2, 1/2) and (1/4, 3/4): p_e = 1/2 -> kappa 1/2.
    assert cohen_kappa([0, 0, 1, 1], [0, 1, 1, 1], labels=(0, 1)) == pytest.approx(0.5)
    assert cohen_kappa([0, 1, 2, 3], [0, 1, 2, 3]) == pytest.approx(1.0)
    # Human [0,1,2,3], judge [1,1,2,2]: p_o = 1/2; p_e = sum_g h_g j_g = 1/4*1/2 + 1/4*1/2 = 1/4 -> 1/3.
    assert cohen_kappa([0, 1, 2, 3], [1, 1, 2, 2]) == pytest.approx(1 / 3)
    # Quadratic weights: observed sum w = (1 + 1) / 4 = 1/2; expected = sum h_i j_k (i-k)^2 with
    # h = 1/4 each, j = 1/2 on grades 1 and 2: (1/8)(1+0+1+4) + (1/8)(4+1+0+1) = 3/2 -> 1 - (1/2)/(3/2) = 2/3.
    assert cohen_kappa([0, 1, 2, 3], [1, 1, 2, 2], weights="quadratic") == pytest.approx(2 / 3)


def test_confusion_matrix_and_binarize():
    matrix = confusion_matrix([0, 3, 3, 2], [1, 3, 2, 2])
    assert matrix.tolist() == [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    assert binarize([0, 1, 2, 3]).tolist() == [0, 0, 1, 1]
    with pytest.raises(ConfigError, match="not in"):
        confusion_matrix([0, 4], [0, 1])


def test_krippendorff_alpha_by_hand():
    # Units (0,0), (1,2), (2,2): coincidences o_00 = 2, o_12 = o_21 = 1, o_22 = 2; n = (2, 1, 3), n.. = 6.
    data = [[0, 1, 2], [0, 2, 2]]
    # nominal: D_o = 2, D_e = 2 (2*1 + 2*3 + 1*3) = 22 -> 1 - 5 * 2 / 22
    assert krippendorff_alpha(data, "nominal") == pytest.approx(1 - 10 / 22)
    # interval: D_o = 1 + 1, D_e = 2 (2*1*1 + 2*3*4 + 1*3*1) = 58 -> 1 - 5 * 2 / 58
    assert krippendorff_alpha(data, "interval") == pytest.approx(1 - 10 / 58)
    # ordinal: d(0,1) = (3 - 1.5)^2 = 2.25, d(0,2) = (6 - 2.5)^2 = 12.25, d(1,2) = (4 - 2)^2 = 4;
    # D_o = 2 * 4 = 8, D_e = 2 (2*1*2.25 + 2*3*12.25 + 1*3*4) = 180 -> 1 - 5 * 8 / 180
    assert krippendorff_alpha(data, "ordinal") == pytest.approx(1 - 40 / 180)
    # A missing value (NaN) drops that unit: only units 1 and 3 remain pairable.
    assert krippendorff_alpha([[0, 1, 2], [0, np.nan, 2]], "nominal") == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="level"):
        krippendorff_alpha(data, "ratio")


def test_rank_correlations_by_hand():
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)  # 5 concordant, 1 discordant
    # Ties: 4 concordant, 0 discordant, one tie in each list -> 4 / sqrt(5 * 5).
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    assert spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert spearman_rho([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0)


def test_against_scipy_with_ties():
    from scipy import stats

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)
    assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_label_agreement_summary():
    summary = label_agreement([0, 1, 2, 3, 3, 0], [0, 1, 2, 2, 3, 1])
    assert summary["pairs"] == 6 and summary["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    assert summary["confusion_matrix_rows_human_cols_judge"][3] == [0, 0, 1, 1]
    assert -1 <= summary["cohen_kappa_binary"] <= 1
