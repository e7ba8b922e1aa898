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
