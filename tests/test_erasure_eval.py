"""The focused evaluation spends its seeds on the erased concept's prompts."""

from spare_core.config import ConceptPair
from spare_core.toy.erasure_eval import GRID_STYLES, focused_evaluation, score
from spare_core.toy.world import OBJECTS, STYLES


def test_focused_evaluation_gives_erased_prompts_more_seeds(toy_backend, toy_classifiers):
    pairs = [ConceptPair("red", "plain")]
    grid = focused_evaluation(toy_backend, toy_classifiers, pairs, erased_seeds=[1, 2, 3], other_seeds=[1], steps=2)
    red = grid.style_labels == STYLES.index("red")
    assert int(red.sum()) == 3 * len(OBJECTS)
    assert len(grid.images) == 3 * len(OBJECTS) + (len(GRID_STYLES) - 1) * len(OBJECTS)
    # Every other prompt of the grid is there once; plain (the surrogate look) is not evaluated.
    others = {(int(o), int(s)) for o, s in zip(grid.object_labels[~red], grid.style_labels[~red], strict=True)}
    assert len(others) == int((~red).sum()) == (len(GRID_STYLES) - 1) * len(OBJECTS)
    assert STYLES.index("plain") not in grid.style_labels.tolist()
    (scores,) = score(grid, pairs)
    assert scores.erased_generations == 3 * len(OBJECTS)


def test_focused_evaluation_of_an_object(toy_backend, toy_classifiers):
    grid = focused_evaluation(
        toy_backend, toy_classifiers, [ConceptPair("star", "circle")], erased_seeds=[1, 2], other_seeds=[], steps=2
    )
    assert (grid.object_labels == OBJECTS.index("star")).all()
    assert len(grid.images) == 2 * len(GRID_STYLES)


def test_other_names_are_prompted_by_name_and_scored_on_the_concept(toy_backend, toy_classifiers):
    from spare_core.toy.erasure_eval import alternative_name_accuracy
    from spare_core.toy.world import ALTERNATIVE_NAMES

    prompts_seen = []
    real_sample = toy_backend.sample

    def recording_sample(prompts, *args, **kwargs):
        prompts_seen.extend(prompts)
        return real_sample(prompts, *args, **kwargs)

    toy_backend.sample = recording_sample
    try:
        table = alternative_name_accuracy(toy_backend, toy_classifiers, "red", seeds=[1], steps=2)
    finally:
        del toy_backend.sample
    assert set(table) == set(ALTERNATIVE_NAMES["red"])
    for name, row in table.items():
        assert row["n"] == len(OBJECTS) and 0 <= row["k"] <= row["n"]
        assert row["accuracy"] == row["k"] / row["n"]
        assert sum(f" {name} " in f" {p} " for p in prompts_seen) == len(OBJECTS)
    assert not any(" red " in f" {p} " for p in prompts_seen)


def test_other_name_ua_counts_only_names_the_base_model_draws():
    from spare_core.toy.erasure_eval import alternative_name_ua

    before = {
        "crimson": {"k": 23, "n": 24, "accuracy": 23 / 24},  # drawn well: counted
        "cherry coloured": {"k": 12, "n": 24, "accuracy": 0.5},  # not understood: erased for free, left out
    }
    after = {"crimson": {"k": 3, "n": 24, "accuracy": 3 / 24}, "cherry coloured": {"k": 0, "n": 24, "accuracy": 0.0}}
    result = alternative_name_ua(before, after)
    assert result["names_counted"] == ["crimson"]
    assert (result["k"], result["n"]) == (21, 24)
    assert result["ua"] == 21 / 24
    assert result["base_rate"] == {"crimson": round(23 / 24, 4), "cherry coloured": 0.5}
    assert alternative_name_ua(before, after, min_base_rate=0.99)["ua"] is None
