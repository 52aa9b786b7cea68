"""Systems are ranked under the qrels the judging job writes: expected gains when it writes those."""

from sparsa.judge.human_agreement import agreement_report
from sparsa.types import Hit, Qrels, Run


def test_systems_rank_under_expected_gains_when_given():
    human = Qrels({"q": {"a": 3, "b": 2, "c": 0}})
    # Equal 0-3 grades for a and b: nDCG cannot tell the two systems apart; the expected gains can, and
    # they agree with the humans (a before b).
    grades = {("q", "a"): 2, ("q", "b"): 2, ("q", "c"): 0}
    gains = {("q", "a"): 290, ("q", "b"): 160, ("q", "c"): 10}
    runs = {"a_first": Run({"q": [Hit("a", 3.0), Hit("b", 2.0), Hit("c", 1.0)]}),
            "b_first": Run({"q": [Hit("b", 3.0), Hit("a", 2.0), Hit("c", 1.0)]})}
    by_grades = agreement_report(grades, human, runs=runs)
    by_gains = agreement_report(grades, human, runs=runs, ranking_gains=gains)
    assert by_grades["systems_ranked_under"] == "grades"
    assert by_gains["systems_ranked_under"] == "expected gains"
    generated = {name: r["generated"] for name, r in by_grades["all"]["system_ranking"]["runs"].items()}
    assert generated["a_first"] == generated["b_first"]  # a tie under the grades
    ranking = by_gains["all"]["system_ranking"]
    assert ranking["runs"]["a_first"]["generated"] > ranking["runs"]["b_first"]["generated"]
    assert ranking["kendall_tau"] == 1.0
    # Label agreement is on the 0-3 grades either way.
    assert by_grades["all"]["labels"] == by_gains["all"]["labels"]
