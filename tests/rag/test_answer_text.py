from __future__ import annotations

from sparsa.rag.answer_text import exact_match, parse_citations, passages_containing, short_answer, token_f1


def test_citations_map_numbers_and_ids_and_drop_unknown_ones():
    ids = ["d1", "d2", "d3"]
    assert parse_citations("Paris [2]", ids) == ["d2"]
    assert parse_citations("Paris [3, 1] and [d2] [d3]", ids) == ["d3", "d1", "d2"]
    assert parse_citations("Paris [4] [0] [x9] [see above]", ids) == []
    assert parse_citations("no markers", ids) == []


def test_short_answer_strips_markers_leads_and_periods():
    assert short_answer("Paris [2].") == "Paris"
    assert short_answer("The answer is: 3776.") == "3776"
    assert short_answer("Answer: 1889 [1]\nmore text") == "1889"
    assert short_answer("The answer to this question is: The Queen") == "The Queen"
    assert short_answer("to this question is: 5.55 cents") == "5.55 cents"
    assert short_answer("Answer is Paris") == "Paris"
    assert short_answer("Answers vary") == "Answers vary"
    assert short_answer("") == ""


def test_squad_matching_over_aliases():
    assert exact_match("The Beatles", ["beatles", "Fab Four"]) == 1.0
    assert exact_match("Beatles band", ["beatles"]) == 0.0
    assert token_f1("Beatles band", ["the beatles"]) == 2 / 3
    assert token_f1("", ["x"]) == 0.0


def test_passages_containing_matches_whole_words():
    docs = [("a", "He was born in 1889 in Paris."), ("b", "Born 18890.")]
    assert passages_containing("1889", docs) == ["a"]
    assert passages_containing("", docs) == []
