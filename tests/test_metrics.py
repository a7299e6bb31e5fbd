import pytest

from multimodal_tags.metrics import accuracy, f1_by_key, macro_f1, prf, tagging_report, top_k_accuracy


def test_micro_prf_worked_by_hand():
    gold = [{"colour:red", "pattern:solid"}, {"colour:blue"}]
    pred = [{"colour:red", "pattern:striped"}, {"colour:blue", "material:cotton"}]
    # tp = 1 + 1 = 2; predicted 4; gold 3 -> P 0.5, R 2/3, F1 = 2*0.5*0.667/1.1667 = 0.5714
    p, r, f = prf(gold, pred)
    assert (p, r) == (0.5, pytest.approx(2 / 3))
    assert f == pytest.approx(4 / 7)


def test_macro_and_per_key_f1_worked_by_hand():
    gold = [{"colour:red", "pattern:solid"}, {"colour:blue"}]
    pred = [{"colour:red", "pattern:striped"}, {"colour:blue", "material:cotton"}]
    # per gold tag: colour:red 1.0, pattern:solid 0.0, colour:blue 1.0 -> macro 2/3
    assert macro_f1(gold, pred) == pytest.approx(2 / 3)
    by_key = f1_by_key(gold, pred)
    assert by_key["colour"] == 1.0
    assert by_key["pattern"] == 0.0 and by_key["material"] == 0.0


def test_accuracy_topk_and_edge_cases():
    assert accuracy(["a", "b", "c"], ["a", "x", "c"]) == pytest.approx(2 / 3)
    assert top_k_accuracy(["a", "b"], [["x", "a"], ["x", "y"]], k=2) == 0.5
    assert prf([set()], [set()]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        accuracy(["a"], [])
    report = tagging_report(["a"], ["a"], [{"k:v"}], [{"k:v"}])
    assert report["category_accuracy"] == 1.0 and report["tags_micro_f1"] == 1.0


def test_decoder_threshold_drops_unsure_generated_tags_when_that_raises_micro_f1():
    from types import SimpleNamespace

    import torch

    from multimodal_tags.inference import tune_decoder_threshold

    model = SimpleNamespace(decoder_threshold=torch.tensor(0.0))
    products = [SimpleNamespace(tags=["a"]), SimpleNamespace(tags=["b"])]
    preds = [{"generated_tags": {"a": 0.9, "c": 0.3}}, {"generated_tags": {"b": 0.8, "d": 0.2}}]
    # worked by hand: keeping everything gives F1 2*2/(4+2) = 0.67; any threshold in (0.3, 0.8] gives 1.0,
    # and the lowest such grid point is chosen
    assert tune_decoder_threshold(model, preds, products) == pytest.approx(0.35)
    assert float(model.decoder_threshold) == pytest.approx(0.35)
    assert preds == [{"generated_tags": {"a": 0.9}}, {"generated_tags": {"b": 0.8}}]


def test_retrieval_recall_counts_the_rank_of_the_right_item():
    from multimodal_tags.metrics import retrieval_recall

    sim = [[0.9, 0.1, 0.0],   # right item first
           [0.8, 0.5, 0.1],   # right item second
           [0.7, 0.6, 0.2]]   # right item third
    assert retrieval_recall(sim, (1, 2, 3)) == {1: 1 / 3, 2: 2 / 3, 3: 1.0}
