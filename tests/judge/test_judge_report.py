"""The report's choice on fit-query figures (``sparsa.judge.report.choose_on_fit``) on made-up entries."""

from __future__ import annotations

from sparsa.judge.report import choose_on_fit


def _entry(model, kappa, tau, tau_gain, held_tau, held_tau_gain):
    held = {"cohen_kappa_4grade": kappa - 0.1, "cohen_kappa_4grade_95ci_query_bootstrap": [0.0, 0.5],
            "cohen_kappa_binary": 0.0, "krippendorff_alpha_ordinal": 0.0}
    return {"calibrator": model, "held_out": held,
            "fit_queries_cv": {"cohen_kappa_4grade": kappa, "kendall_tau": tau,
                               "expected_gain": {"kendall_tau": tau_gain}},
            "system_ranking_held_out": {"kendall_tau": held_tau, "spearman_rho": 0.1},
            "system_ranking_held_out_expected_gain": {"kendall_tau": held_tau_gain, "spearman_rho": 0.2}}


SETTINGS = {"a": _entry("least-squares", 0.20, 0.6, 0.8, 0.11, 0.12),
            "a/ordinal-logit": _entry("ordinal-logit", 0.25, 0.8, 0.7, 0.21, 0.22),
            "b": _entry("least-squares", 0.10, 0.8, 0.5, 0.31, 0.32)}


def test_choice_by_fit_kappa_and_fit_tau_over_both_qrels_kinds():
    chosen = choose_on_fit(SETTINGS)
    assert chosen["for_kappa"]["setting"] == "a/ordinal-logit"
    # tau 0.8 three times (a expected-gain, a/ordinal-logit discrete, b discrete): the higher fit kappa wins
    ranking = chosen["for_system_ranking"]
    assert (ranking["setting"], ranking["qrels"], ranking["held_out_kendall_tau"]) == ("a/ordinal-logit",
                                                                                       "discrete", 0.21)


def test_narrower_pools_reproduce_the_earlier_rule():
    chosen = choose_on_fit(SETTINGS, models=("least-squares",), kinds=("discrete",))
    assert chosen["for_kappa"]["setting"] == "a" and chosen["for_system_ranking"]["setting"] == "b"
    gains = choose_on_fit(SETTINGS, models=("least-squares",))["for_system_ranking"]
    assert (gains["setting"], gains["qrels"], gains["held_out_kendall_tau"]) == ("a", "expected-gain", 0.12)
    assert gains["fit_cv_kendall_tau"] == 0.8 and gains["calibrator"] == "least-squares"
