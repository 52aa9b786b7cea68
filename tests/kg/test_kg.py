"""KG retrieval on a tiny knowledge base written here (the real minilm-l6 encoder ranks relations)."""

from __future__ import annotations

import gzip

import pytest

from sparsa.errors import DataFormatError
from sparsa.kg.kg import KGQuestion, KGRetriever, KnowledgeGraph, load_metaqa, retrieve_cached

TRIPLES = [
    ("Big", "directed_by", "Penny Marshall"),
    ("Big", "starred_actors", "Tom Hanks"),
    ("Big", "release_year", "1988"),
    ("Splash", "starred_actors", "Tom Hanks"),
    ("Splash", "directed_by", "Ron Howard"),
    ("Splash", "release_year", "1984"),
    ("Cast Away", "starred_actors", "Tom Hanks"),
    ("Cast Away", "directed_by", "Robert Zemeckis"),
    ("Apollo 13", "directed_by", "Ron Howard"),
    ("Apollo 13", "starred_actors", "Kevin Bacon"),
]


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> KnowledgeGraph:
    path = tmp_path_factory.mktemp("kb") / "kb.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write("".join(f"{h}|{r}|{t}\n" for h, r, t in TRIPLES))
    return KnowledgeGraph.load(path)


@pytest.fixture(scope="module")
def retriever(graph) -> KGRetriever:
    return KGRetriever(graph, max_paths=4, max_tails=5)


def test_graph_holds_both_directions(graph):
    assert graph.num_triples == len(TRIPLES)
    hanks = graph.entity_id("tom hanks")
    movies = sorted(graph.entities[o] for r, forward, o in graph.edges[hanks] if not forward)
    assert movies == ["Big", "Cast Away", "Splash"]


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "kb.txt"
    path.write_text("Big|directed_by|Penny Marshall\nBig directed_by Penny Marshall\n")
    with pytest.raises(DataFormatError, match=r"kb.txt:2"):
        KnowledgeGraph.load(path)


def test_entity_linking_brackets_ngram_and_fuzzy(retriever):
    assert retriever.link_entities("what films did [tom hanks] star in") == ["Tom Hanks"]
    assert retriever.link_entities("who directed Cast Away") == ["Cast Away"]
    assert retriever.link_entities("who starred in [Apolo 13]") == ["Apollo 13"]
    assert retriever.link_entities("[Nobody Known]") == []


def test_one_hop_paths_reach_the_answers(retriever):
    result = retriever.retrieve("what movies did [Tom Hanks] act in")
    assert result.topic == "Tom Hanks"
    top = result.paths[0]
    assert len(top.steps) == 1 and set(top.tails) == {"Big", "Splash", "Cast Away"}
    assert top.text.startswith("Tom Hanks acted in: ")
    assert [p.score for p in result.paths] == sorted((p.score for p in result.paths), reverse=True)


def test_two_hop_paths_are_grouped_by_relation_path(retriever):
    result = retriever.retrieve("who directed the movies starred by [Tom Hanks]")
    by_text = {p.text.split(":")[0]: set(p.tails) for p in result.paths}
    assert by_text["Tom Hanks acted in movies directed by"] == {"Penny Marshall", "Ron Howard",
                                                                "Robert Zemeckis"}
    best_two_hop = next(p for p in result.paths if len(p.steps) == 2)
    assert set(best_two_hop.tails) == {"Penny Marshall", "Ron Howard", "Robert Zemeckis"}
    # The topic itself is never an answer of a 2-hop path (co-actors of Tom Hanks exclude him).
    assert all("Tom Hanks" not in p.tails for p in result.paths if len(p.steps) == 2)


def test_no_topic_means_no_paths(retriever):
    result = retriever.retrieve("[Somebody Unknown] directed what")
    assert result.topic is None and result.paths == ()


def test_load_metaqa_and_cache(tmp_path, retriever):
    folder = tmp_path / "1-hop" / "vanilla"
    folder.mkdir(parents=True)
    with gzip.open(folder / "qa_dev.txt.gz", "wt") as f:
        f.write("what movies did [Tom Hanks] act in\tBig|Splash|Cast Away\n"
                "who directed [Big]\tPenny Marshall\n")
    questions = load_metaqa(tmp_path, 1, "dev")
    assert ([q.answers for q in questions][1] == ("Penny Marshall",)
            and questions[0].bracketed == ["Tom Hanks"])
    cache = tmp_path / "cache.pkl"
    first = retrieve_cached(retriever, questions, cache)
    again = retrieve_cached(retriever, questions, cache)
    assert cache.is_file() and [r.paths[0].text for r in first] == [r.paths[0].text for r in again]
    with gzip.open(folder / "qa_test.txt.gz", "wt") as f:
        f.write("a question without answers\n")
    with pytest.raises(DataFormatError, match=r"qa_test.txt.gz:1"):
        load_metaqa(tmp_path, 1, "test")


def test_cache_written_before_the_move_to_sparsa_kg_still_loads(tmp_path, retriever):
    """A ``--cache`` pickle from when this module was ``sparsa.rag.kg`` names classes by that path."""
    import pickle

    question = KGQuestion("q1", "who directed [Big]", ("Penny Marshall",), 1)
    fresh = retrieve_cached(retriever, [question], None)
    old = pickle.dumps({question.text: fresh[0]}, protocol=2)  # protocol 2 names classes as "module\nname"
    assert b"sparsa.kg.kg\n" in old
    cache = tmp_path / "old.pkl"
    cache.write_bytes(old.replace(b"sparsa.kg.kg\n", b"sparsa.rag.kg\n"))
    loaded = retrieve_cached(retriever, [question], cache)
    assert [p.text for p in loaded[0].paths] == [p.text for p in fresh[0].paths]
