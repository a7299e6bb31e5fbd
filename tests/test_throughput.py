"""experiments/throughput.py end to end on the synthetic shop with tiny models."""
import json

from conftest import synthetic_catalog


def test_throughput_times_three_paths_that_give_the_same_tags(tmp_path):
    from experiments import throughput

    catalog = synthetic_catalog(tmp_path, 60)
    result = throughput.main(["--catalog", str(catalog), "--out", str(tmp_path / "out"), "--preset", "tiny",
                              "--allow-random-weights", "--precision", "fp32", "--products", "24", "--naive-products", "4", "--batch", "8",
                              "--large-photos", "6"])
    assert result["same_tags_naive_project"] == result["same_tags_stock_project"] == 1.0
    assert result["preset"] == "tiny" and result["tagger_weights"].startswith("random")
    assert min(result["naive_per_s"], result["stock_per_s"], result["project_per_s"]) > 0
    assert result["gflop_per_product"] > 0 and result["matmul_gflop_s"] > 0
    assert result["large_photo_products"] == 6 and result["large_photo_project_per_s"] > 0
    assert 0 <= result["large_photo_same_tags"] <= 1  # (a random tagger has near ties: measured on real runs)
    assert 0 <= result["large_photo_project_micro_f1"] <= 1 and 0 <= result["large_photo_stock_micro_f1"] <= 1
    # the int8 text path: timed, or refused by its cosine check (a tiny random encoder may drift)
    assert result.get("project_int8_text_per_s", 1) > 0 and ("project_int8_text_per_s" in result) != (
        "int8_text_refused" in result) or not throughput.onnx_available()
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {"naive_per_s", "stock_per_s", "project_per_s", "device", "preset", "project_same_inputs_ratio",
            "large_photo_project_per_s", "large_photo_stock_per_s"} <= set(saved)


def test_large_photos_are_real_photos_upscaled_with_their_own_hash(tmp_path):
    from PIL import Image

    from experiments.throughput import large_photos
    from multimodal_tags.data.catalog import read_catalog

    catalog = read_catalog(synthetic_catalog(tmp_path, 12))
    small = [p for p in catalog.products if p.image][:3]
    big, root = large_photos(small, catalog.image_root, tmp_path / "out", 3)
    for before, after in zip(small, big):
        with Image.open(root / after.image) as im:
            assert 1500 <= max(im.size) <= 3000
        assert after.image_hash and after.image_hash != before.image_hash  # a product without one has no photo


def test_the_gpu_path_runs_on_a_cpu_with_fixed_shape_decoding_and_the_same_tags(tmp_path):
    """`--device cuda --preset full` on a GPU; here its pieces on the tiny preset: the tagger beside the
    encoders, decoding at fixed shapes with a pre-allocated cache ("graphs" runs as "static" on a CPU)."""
    from experiments import throughput

    catalog = synthetic_catalog(tmp_path, 40)
    result = throughput.main(["--catalog", str(catalog), "--out", str(tmp_path / "out"), "--preset", "tiny",
                              "--allow-random-weights", "--precision", "fp32", "--products", "16",
                              "--naive-products", "2", "--batch", "8", "--large-photos", "0",
                              "--device", "cpu", "--decoding", "graphs"])
    assert result["decoding"] == "graphs" and result["same_tags_stock_project"] == 1.0
    assert result["encoder_weights"].startswith("random")


def test_the_full_preset_times_offline_as_its_random_twin():
    from experiments.throughput import timing_config

    twin = timing_config("full", allow_random=True)
    assert (twin.text_encoder, twin.image_encoder, twin.tag_decoder) == (
        "bert-base@random", "open_clip:ViT-B-32@random", "closed")
    assert (twin.decoder.n_layer, twin.decoder.n_embd, twin.decoder.gpt2) == (12, 768, "scratch")
    assert timing_config("full", allow_random=False).text_encoder == "hf:bert-base-uncased"
