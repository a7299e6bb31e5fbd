"""experiments/new_shop.py's pieces: H&M labels in the model's vocabulary, the simulated reviewer, the scores."""
from multimodal_tags.data.schema import Product

from experiments.hm_map import truth
from experiments.new_shop import review_events, scores


def test_hm_labels_map_only_where_confident():
    assert truth({"product_type_name": "T-shirt", "colour_group_name": "Dark Blue", "index_group_name": "Menswear"}) == (
        "Tshirts", {"colour": "Navy Blue", "gender": "Men"})
    assert truth({"product_type_name": "Bodysuit", "colour_group_name": "Other", "index_group_name": "Divided"}) == (None, {})


def test_the_reviewer_judges_the_category_and_the_mapped_keys_only():
    p = Product(id="a1", title="Tee", category="Tshirts", tags=["colour:navy blue", "gender:men"])
    row = {"category": "Tops", "tags": ["colour:black", "gender:men", "usage:casual"]}
    events = [(e.tag, e.action) for e in review_events(p, row, "q")]
    assert events == [("category:Tops", "reject"), ("category:Tshirts", "add"), ("colour:black", "reject"),
                      ("gender:men", "accept"), ("colour:navy blue", "add")]
    assert len({e.event_id for e in review_events(p, row, "q")}) == 5


def test_scores_count_a_missing_colour_as_wrong_and_give_intervals():
    products = [Product(id=str(i), title="t", category="Tops", tags=["colour:black"]) for i in range(4)]
    rows = {"0": {"category": "Tops", "tags": ["colour:black"]}, "1": {"category": "Tops", "tags": []},
            "2": {"category": "Bra", "tags": ["colour:red", "colour:black"]}, "3": {"category": "Tops", "tags": ["colour:black"]}}
    s = scores(rows, products)
    assert (s["category_acc"], s["colour_acc"]) == (0.75, 0.5)
    assert s["micro_f1"] == round(2 * 3 / (2 * 3 + 1 + 1), 4)
    assert s["colour_acc_interval"][0] <= 0.5 <= s["colour_acc_interval"][1]


def test_the_colour_bound_reads_the_type_from_the_sample_and_the_words_from_the_text():
    from experiments.new_shop_colour_bound import category_mode, names_colour

    sample = [("Trousers", "Black")] * 3 + [("Jeans", "Blue")] * 2 + [("Top", "White")]
    answer = category_mode(sample, pseudo_count=1.0)
    assert (answer("Trousers"), answer("Jeans"), answer("Unseen type")) == ("Black", "Blue", "Black")
    assert category_mode(sample, pseudo_count=50.0)("Jeans") == "Black"  # shrunk to the shop's mode
    assert names_colour({"prod_name": "Slim jeans", "detail_desc": "Dark blue denim", "colour_group_name": "Dark Blue"})
    assert not names_colour({"prod_name": "Jade HW", "detail_desc": "Bluesy", "colour_group_name": "Blue"})
