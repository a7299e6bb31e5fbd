import dataclasses

import numpy as np
import pytest
import torch

from multimodal_tags.config import TrainConfig, WordScoreConfig
from multimodal_tags.models.decoder import DecoderConfig, TagDecoder
from multimodal_tags.models.fusion import ConcatFusion, GatedFusion, modality_dropout
from multimodal_tags.models.heads import asymmetric_loss, tune_thresholds
from multimodal_tags.models.presets import get_preset, list_presets
from multimodal_tags.models.tag_tokenizer import TagTokenizer, TextTagTokenizer
from multimodal_tags.models.tagger import Batch, IncompatibleModel, Tagger, build_tokenizer, decoder_targets

TRAIN_TAGS = [["colour:red", "material:cotton", "pattern:solid", "use:gym", "use:office"],
              ["colour:blue", "material:steel"], ["colour:red", "use:gym"], ["pattern:striped", "colour:black"]]
VOCAB = sorted({t for tags in TRAIN_TAGS for t in tags})


def shrink(cfg):
    """A preset's structure at test size: same fusion, mapper and vocabulary mode, tiny widths."""
    return dataclasses.replace(cfg, text_dim=12, image_dim=10, dim=16, adversary_field="shop", price_field="price",
                               lexical_buckets=64, lexical_dim=8 if cfg.lexical_dim else 0,
                               decoder=dataclasses.replace(cfg.decoder, gpt2="scratch", n_layer=1, n_embd=16,
                                                           n_head=2, prefix_length=2, max_tags=6))


def batch(n=6, cfg=None, tokenizer=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    tags = [TRAIN_TAGS[i % len(TRAIN_TAGS)] for i in range(n)]
    multi_hot = torch.tensor([[float(t in ts) for t in VOCAB] for ts in tags])
    return Batch(text=torch.randn(n, cfg.text_dim, generator=g), image=torch.randn(n, cfg.image_dim, generator=g),
                 has_text=torch.tensor([True] * (n - 1) + [False]), has_image=torch.tensor([False] + [True] * (n - 1)),
                 category=torch.arange(n) % 3, tags=multi_hot,
                 decoder_ids=torch.from_numpy(decoder_targets(tokenizer, tags)) if tokenizer else None,
                 adversary=torch.arange(n) % 2, price=torch.linspace(1, 3, n),
                 lexical_ids=torch.randint(0, 64, (n, 5), generator=g))


@pytest.mark.parametrize("preset", list_presets())
@pytest.mark.parametrize("fusion", ["concat", "gated"])
def test_every_preset_trains_and_every_parameter_gets_a_finite_gradient(preset, fusion):
    cfg = shrink(dataclasses.replace(get_preset(preset), fusion=fusion))
    tok = build_tokenizer(cfg, VOCAB, TRAIN_TAGS)
    model = Tagger(cfg, ["a", "b", "c"], VOCAB, tok, adversary_classes=["shop1", "shop2"]).train()
    b = batch(cfg=cfg, tokenizer=tok)
    out = model(b, drop_modalities=True)
    losses = model.losses(b, out, TrainConfig(l1=1e-4))
    assert set(losses) == {"category", "tags", "decoder", "adversary", "price", "total"} | (
        {"photo"} if cfg.photo_scores else set())
    losses["total"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        grad = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
        assert torch.isfinite(grad).all(), name


def test_fusions_tolerate_missing_modalities():
    t, i = torch.randn(3, 8), torch.randn(3, 6)
    has_t, has_i = torch.tensor([True, False, True]), torch.tensor([True, True, False])
    gated = GatedFusion(8, 6, 16).eval()
    out = gated(t, i, has_t, has_i)
    assert torch.allclose(out.weights.sum(-1), torch.ones(3))
    assert out.weights[1, 0] == 0 and out.weights[2, 1] == 0  # an absent modality gets no weight
    changed = i.clone()
    changed[2] = 100.0  # an absent photo's vector is ignored
    assert torch.allclose(gated(t, changed, has_t, has_i).fused[2], out.fused[2])
    concat = ConcatFusion(8, 6, 16).eval()
    assert torch.allclose(concat(t, changed, has_t, has_i).fused[2], concat(t, i, has_t, has_i).fused[2])
    none = gated(t, i, torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool))
    assert torch.isfinite(none.fused).all() and (none.weights == 0).all()


def test_modality_dropout_never_drops_both():
    has = torch.ones(1000, dtype=torch.bool)
    t, i = modality_dropout(has, has, p=0.5, generator=torch.Generator().manual_seed(0))
    assert (t | i).all() and 350 < (~(t & i)).sum() < 650


def test_tokenizers_round_trip_and_order():
    tok = TagTokenizer.fit(VOCAB, TRAIN_TAGS)
    assert tok.single_valued == {"colour", "material", "pattern"}  # 'use' has two values on one product
    ids = tok.encode(["use:gym", "colour:red", "unknown:tag"])
    assert ids[0] == tok.BOS and ids[-1] == tok.EOS
    assert tok.decode(ids) == ["colour:red", "use:gym"]  # canonical order: most frequent key first
    assert TagTokenizer.from_dict(tok.to_dict()).encode(["use:gym"]) == tok.encode(["use:gym"])
    bpe = TextTagTokenizer.train(TRAIN_TAGS * 5, vocab_size=300)
    assert bpe.decode(bpe.encode(["colour:mauve", "material:cotton"])) == ["colour:mauve", "material:cotton"]


def _naive_greedy(decoder, fused, steps):
    """Greedy decoding that re-runs GPT-2 over the whole sequence each step, with the same constraints."""
    tok = decoder.tokenizer
    prefix = decoder.mapper(fused)
    seq = torch.full((fused.shape[0], 1), tok.BOS)
    used = torch.zeros(fused.shape[0], len(tok), dtype=torch.bool)
    used_keys = torch.zeros(fused.shape[0], len(tok.keys) + 1, dtype=torch.bool)
    out_ids = []
    for _ in range(steps):
        emb = torch.cat([prefix, decoder.gpt.transformer.wte(seq)], dim=1)
        logits = decoder._constrain(decoder.gpt(inputs_embeds=emb).logits[:, -1].float(), used, used_keys)
        nxt = logits.argmax(-1)
        out_ids.append(nxt)
        used[torch.arange(len(nxt)), nxt] = True
        k = decoder.key_of_token[nxt]
        used_keys[torch.arange(len(nxt))[k >= 0], k[k >= 0]] = True
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    return torch.stack(out_ids, 1)


def test_kv_cached_generation_equals_full_recompute_and_respects_constraints():
    torch.manual_seed(0)
    tags = [f"k{i % 5}:v{i}" for i in range(40)] + [f"multi:m{i}" for i in range(10)]
    train = [[f"k{j}:v{j + 5 * r}" for j in range(5)] + ["multi:m1", "multi:m2"] for r in range(8)]
    tok = TagTokenizer.fit(tags, train)
    assert "multi" not in tok.single_valued and "k0" in tok.single_valued
    decoder = TagDecoder(16, tok, DecoderConfig(prefix_length=2, n_layer=2, n_embd=32, n_head=2, max_tags=12)).eval()
    with torch.no_grad():
        decoder.gpt.lm_head.weight.mul_(0.0).add_(torch.randn_like(decoder.gpt.lm_head.weight))
        decoder.gpt.lm_head.weight[tok.EOS] = -10.0  # never stop early: exercise the constraints
        fused = torch.randn(64, 16)
        generated = decoder.generate(fused, max_steps=12)
        naive = _naive_greedy(decoder, fused, 12)
    for row, pairs in zip(naive.tolist(), generated):
        assert [t for t, _ in pairs] == tok.decode(row)
        names = [t for t, _ in pairs]
        assert len(names) == len(set(names))  # no repeats
        single = [t.split(":")[0] for t in names if t.split(":")[0] in tok.single_valued]
        assert len(single) == len(set(single))  # one value per single-valued key
        assert all(0 < p <= 1 for _, p in pairs)


def test_length_grouped_teacher_forcing_is_the_padded_batch_loss_and_gradient():
    """Rows of similar length go through GPT-2 in groups: the loss and every gradient are those of one
    batch padded to its longest row (what the decoder computed before grouping)."""
    torch.manual_seed(0)
    tags = [f"k{i % 6}:v{i}" for i in range(60)]
    tok = TagTokenizer.fit(tags, [tags[i:i + 6] for i in range(0, 60, 6)])
    decoder = TagDecoder(16, tok, DecoderConfig(prefix_length=3, n_layer=2, n_embd=32, n_head=2, max_tags=24,
                                                dropout=0.0))
    n_tags = [1, 2, 2, 3, 5, 8, 8, 9, 12, 20, 20, 24] * 4  # lengths 4 to 25 tags apart, as on Myntra
    seqs = [tok.encode([tags[(7 * r + j) % 60] for j in range(k)]) for r, k in enumerate(n_tags)]
    width = max(len(s) for s in seqs)
    target = torch.full((len(seqs), width + 3), tok.PAD)  # padded beyond the longest, as datasets pad
    for r, s in enumerate(seqs):
        target[r, :len(s)] = torch.tensor(s)
    fused, bias = torch.randn(len(seqs), 16), torch.randn(len(seqs), len(tags))

    def padded_batch_loss():
        t = target[:, :width]
        labels = t[:, 1:].masked_fill(t[:, 1:] == tok.PAD, -100)
        logits = decoder._teacher_forced_logits(decoder.mapper(fused), t[:, :-1], bias)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                 ignore_index=-100)

    from multimodal_tags.models.decoder import length_groups

    groups = length_groups((target != tok.PAD).sum(1), 3, call_cost=8)
    assert len(groups) > 1 and sorted(torch.cat(groups).tolist()) == list(range(len(seqs)))
    results = []
    for loss_fn in (padded_batch_loss, lambda: decoder(fused, target, tag_bias=bias)):
        decoder.zero_grad()
        loss = loss_fn()
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in decoder.parameters() if p.grad is not None]))
    (ref_loss, ref_grads), (loss, grads) = results
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert len(grads) == len(ref_grads)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_save_load_gives_identical_predictions(tmp_path):
    cfg = shrink(get_preset("offline"))
    tok = build_tokenizer(cfg, VOCAB, TRAIN_TAGS)
    model = Tagger(cfg, ["a", "b", "c"], VOCAB, tok, adversary_classes=["s1", "s2"]).eval()
    model.thresholds.fill_(0.3)
    b = batch(cfg=cfg, tokenizer=tok)
    before = model.predict(b)
    model.save(tmp_path / "m")
    model.save(tmp_path / "m")  # overwriting an existing folder is atomic too
    loaded = Tagger.load(tmp_path / "m")
    assert loaded.predict(b) == before
    assert "generated_tags" in before[0]
    assert before[0]["modality_weights"] == {"text": 1.0, "image": 0.0}  # product 0 has no photo
    assert before[-1]["modality_weights"] == {"text": 0.0, "image": 1.0}  # the last has no text


def test_incompatible_model_folder_is_refused(tmp_path):
    import json

    cfg = shrink(get_preset("tiny"))
    Tagger(cfg, ["a"], VOCAB, None).save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["format"] = "mmtags-model/0"
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(IncompatibleModel, match="mmtags-model/0"):
        Tagger.load(tmp_path / "m")


def test_threshold_tuning_and_asymmetric_loss():
    probs = torch.tensor([[0.9, 0.35], [0.8, 0.30], [0.2, 0.1], [0.7, 0.32], [0.1, 0.05], [0.6, 0.31]]).numpy()
    targets = torch.tensor([[1, 1], [1, 1], [0, 0], [1, 1], [0, 0], [1, 1]]).numpy()
    th = tune_thresholds(probs, targets, min_positives=2)
    assert th[1] <= 0.30 and th[0] <= 0.6  # tag 2 is only ever predicted with low scores
    logits, y = torch.randn(4, 7), (torch.rand(4, 7) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum") / 4
    assert torch.allclose(asymmetric_loss(logits, y, 0.0, 0.0, 0.0), bce, atol=1e-5)
    assert asymmetric_loss(logits, y) < bce  # easy negatives are down-weighted


def test_pretrained_gpt2_from_a_local_folder_open_vocabulary(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from multimodal_tags.models.encoder_base import WeightsUnavailable

    bpe = TextTagTokenizer.train(TRAIN_TAGS * 5, vocab_size=300)
    folder = tmp_path / "my-gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(bpe), n_positions=64, n_embd=16, n_layer=1, n_head=2)).save_pretrained(folder)
    bpe.tok.save_pretrained(folder)
    cfg = dataclasses.replace(shrink(get_preset("full")))
    cfg.decoder = dataclasses.replace(cfg.decoder, gpt2=str(folder))
    tok = build_tokenizer(cfg, VOCAB, TRAIN_TAGS)
    assert isinstance(tok, TextTagTokenizer) and len(tok) == len(bpe)
    model = Tagger(cfg, ["a", "b", "c"], VOCAB, tok, adversary_classes=["s1", "s2"])
    loaded = GPT2LMHeadModel.from_pretrained(folder)
    assert torch.equal(model.decoder.gpt.transformer.h[0].mlp.c_fc.weight, loaded.transformer.h[0].mlp.c_fc.weight)
    b = batch(cfg=cfg, tokenizer=tok)
    model.train()
    model.losses(b, model(b), TrainConfig())["total"].backward()
    preds = model.predict(b)
    assert all(isinstance(p["generated_tags"], dict) for p in preds)
    cfg.decoder = dataclasses.replace(cfg.decoder, gpt2=str(tmp_path / "missing"))
    with pytest.raises(WeightsUnavailable, match="missing"):
        Tagger(cfg, ["a"], VOCAB, tok)


def test_lexical_branch_is_an_idf_weighted_bag_fitted_on_training_texts():
    from multimodal_tags.models.lexical import LexicalEncoder, lexical_ids, lexical_matrix

    assert lexical_ids("red red shirt", 1 << 10) == list(dict.fromkeys(lexical_ids("red red shirt", 1 << 10)))
    texts = ["red cotton shirt machine wash", "blue denim jeans machine wash", "red silk scarf machine wash"]
    ids = torch.from_numpy(lexical_matrix(texts, 1 << 12))
    enc = LexicalEncoder(1 << 12, 4)
    enc.fit_idf(ids)
    wash, red, denim = (lexical_ids(w, 1 << 12)[0] for w in ("wash", "red", "denim"))
    # a word every text has weighs least; the rarer the word, the more it weighs
    assert enc.idf[wash] < enc.idf[red] < enc.idf[denim]
    # padding never contributes: a text and the same text padded wider give the same vector
    wide = torch.cat([ids, torch.zeros(3, 7, dtype=ids.dtype)], dim=1)
    assert torch.allclose(enc(ids), enc(wide), atol=1e-6)


def test_word_scores_are_cross_fitted_and_the_saved_table_reproduces_the_svms():
    from sklearn.svm import LinearSVC

    from multimodal_tags.models.lexical import LexicalEncoder, lexical_matrix
    from multimodal_tags.models.word_scores import WordScores, cross_fitted_scores, smooth_idf, tfidf_csr

    colours = ["red", "blue", "green", "black"]
    texts = [f"{colours[i % 4]} cotton shirt item{i}" for i in range(40)] + ["zebra print scarf"]
    y = np.array([[i < 40 and i % 4 == 0, i == 40] for i in range(41)], dtype=np.int64)  # "is red", "is the zebra"
    ids = lexical_matrix(texts, 1 << 10)
    scores, w, b = cross_fitted_scores(ids, y, 1 << 10, folds=4)
    # the red products are recognised by SVMs that never saw them
    assert (scores[y[:, 0] == 1, 0] > 0).all() and (scores[y[:, 0] == 0, 0] < 0).all()
    # "zebra" appears in one product only: its own out-of-fold score cannot know it; the full fit can
    assert scores[40, 1] < 0
    table = WordScores(1 << 10, 2)
    table.load_fitted(w, b)
    enc = LexicalEncoder(1 << 10, 4)
    enc.fit_idf(torch.from_numpy(ids))
    assert np.allclose(enc.idf.numpy(), smooth_idf(ids, 1 << 10))
    new = lexical_matrix(["green cotton shirt", "zebra print scarf", "red shirt"], 1 << 10)
    got = table(torch.from_numpy(new), enc.tfidf(torch.from_numpy(new)))
    svm = LinearSVC(C=1.0, random_state=0).fit(tfidf_csr(ids, smooth_idf(ids, 1 << 10)), y[:, 0])
    expect = svm.decision_function(tfidf_csr(new, smooth_idf(ids, 1 << 10)))
    assert torch.allclose(got[:, 0], torch.from_numpy(expect).float(), atol=1e-4)
    assert got[1, 1] > 0 and got[0, 0] < 0 < got[2, 0]


def test_averaged_word_scores_score_new_texts_with_the_folds_mean_and_keep_the_held_out_scores_honest():
    from multimodal_tags.models.lexical import lexical_matrix
    from multimodal_tags.models.linear_svms import fit_svms
    from multimodal_tags.models.word_scores import cross_fitted_scores, smooth_idf, tfidf_csr

    colours = ["red", "blue", "green", "black"]
    texts = [f"{colours[i % 4]} cotton shirt item{i}" for i in range(40)]
    y = np.array([[i % 4 == 0, i % 4 == 1] for i in range(40)], dtype=np.int64)
    ids = lexical_matrix(texts, 1 << 10)
    scores, w, b = cross_fitted_scores(ids, y, 1 << 10, folds=4, final="average")
    assert (scores[y[:, 0] == 1, 0] > 0).all() and (scores[y[:, 0] == 0, 0] < 0).all()
    idf = smooth_idf(ids, 1 << 10)
    order = np.random.default_rng(0).permutation(40)
    folds = [fit_svms(tfidf_csr(ids[np.setdiff1d(order, held)], idf), y[np.setdiff1d(order, held)])
             for held in np.array_split(order, 4)]
    new = tfidf_csr(lexical_matrix(["red shirt", "blue cotton"], 1 << 10), idf)
    mean_of_scores = np.mean([new @ fw.T + fb for fw, fb in folds], axis=0)
    assert np.allclose(new @ w.T + b, mean_of_scores, atol=1e-5)
    assert mean_of_scores[0, 0] > 0 > mean_of_scores[1, 0] and mean_of_scores[1, 1] > 0
    with pytest.raises(ValueError, match="final"):
        cross_fitted_scores(ids, y, 1 << 10, folds=4, final="mean")


def test_every_svm_on_one_shared_liblinear_problem_is_linearsvc_and_does_not_depend_on_the_workers():
    from multimodal_tags.models.linear_svms import fit_svms, have_liblinear
    from multimodal_tags.models.word_scores import smooth_idf, tfidf_csr

    if not have_liblinear():
        pytest.skip("liblinear-official (the fast extra) is not installed")
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 300, size=(400, 12))
    ids = np.where(np.diff(np.sort(ids, axis=1), axis=1, prepend=0) == 0, 0, np.sort(ids, axis=1))  # distinct per row
    y = np.stack([(ids == m).any(1) ^ (rng.random(400) < 0.05) for m in range(1, 8)] + [np.zeros(400, bool)], 1)
    x = tfidf_csr(ids, smooth_idf(ids, 512))
    w0, b0 = fit_svms(x, y.astype(np.int64), 2.0, n_jobs=1, use_liblinear=False)
    w1, b1 = fit_svms(x, y.astype(np.int64), 2.0, n_jobs=1, use_liblinear=True)
    w2, b2 = fit_svms(x, y.astype(np.int64), 2.0, n_jobs=2, use_liblinear=True)
    assert np.abs((x @ w0.T + b0) - (x @ w1.T + b1)).max() < 1e-3  # LinearSVC's SVMs, up to the tolerance
    assert np.array_equal(w1, w2) and np.array_equal(b1, b2)  # the same whichever worker fits a column
    assert b1[-1] == -1.0 and not w1[-1].any()  # a column no product has: a constant score


def test_word_scores_feed_the_model_and_steer_the_decoder_but_not_when_text_is_hidden():
    cfg = shrink(get_preset("tiny"))
    assert cfg.word_scores.enabled
    tok = build_tokenizer(cfg, VOCAB, TRAIN_TAGS)
    model = Tagger(cfg, ["a", "b", "c"], VOCAB, tok).eval()
    b = batch(cfg=cfg, tokenizer=tok)
    before = model.predict(b)
    j = VOCAB.index("use:office")
    with torch.no_grad():
        model.word_scores.intercept[j] = 100.0  # the words say "use:office" for every product
    after = model.predict(b)
    assert after[0]["generated_tags"]["use:office"] > 0.99
    assert after[-1] == before[-1]  # the last product's text is hidden: no word evidence
    # in training, the batch's cross-fitted scores are used instead of the table's
    b.word_scores = torch.zeros(len(b.text), model.word_scores.weight.shape[1])
    assert torch.equal(model(b)["tag_bias"], torch.zeros(len(b.text), len(VOCAB)))
    with pytest.raises(ValueError, match="lexical_buckets"):
        Tagger(dataclasses.replace(cfg, lexical_buckets=0), ["a"], VOCAB, tok)


def test_category_word_scores_steer_the_category_and_need_no_trained_word_table():
    cfg = dataclasses.replace(shrink(get_preset("tiny")), lexical_dim=0,
                              word_scores=WordScoreConfig(enabled=True, categories=True, category_bias=1.0))
    tok = build_tokenizer(cfg, VOCAB, TRAIN_TAGS)
    model = Tagger(cfg, ["a", "b", "c"], VOCAB, tok).eval()
    assert model.word_scores.weight.shape[1] == len(VOCAB) + 3  # a column per tag, then per category
    assert not any(isinstance(m, torch.nn.EmbeddingBag) for m in model.modules())  # TF-IDF only
    b = batch(cfg=cfg, tokenizer=tok)
    before = model.predict(b)
    with torch.no_grad():
        model.word_scores.intercept[len(VOCAB) + 2] = 100.0  # the words say category "c" for every product
    after = model.predict(b)
    assert all(p["category"] == "c" for p in after[:-1])
    assert after[-1] == before[-1]  # the last product's text is hidden: no word evidence
    # in training the batch's cross-fitted scores (tags and categories) replace the table's
    b.word_scores = torch.zeros(len(b.text), len(VOCAB) + 3)
    b.word_scores[:, len(VOCAB)] = 50.0
    assert (model(b)["category_logits"][:-1].argmax(-1) == 0).all()
    with pytest.raises(ValueError, match="word_scores"):
        Tagger(dataclasses.replace(cfg, word_scores=WordScoreConfig(categories=True)), ["a"], VOCAB, tok)


def test_word_score_table_is_saved_pruned_and_sparse(tmp_path):
    from safetensors.torch import load_file, save_file

    from multimodal_tags.models.word_scores import PRUNE_BELOW, pack_table, unpack_table

    weight = torch.randn(300, 7) * torch.logspace(-5, 0, 300)[:, None]  # rows from tiny to large weights
    packed = pack_table(weight)
    assert packed["mask"].dtype == torch.uint8 and packed["values"].dtype == torch.float16
    dense = unpack_table(packed, tuple(weight.shape))
    kept = weight.abs() > PRUNE_BELOW
    assert (dense[~kept] == 0).all() and 0 < kept.sum() < weight.numel()
    assert torch.allclose(dense[kept], weight[kept], rtol=1e-3)

    cfg = shrink(get_preset("tiny"))
    tok = build_tokenizer(cfg, VOCAB, TRAIN_TAGS)
    model = Tagger(cfg, ["a", "b", "c"], VOCAB, tok).eval()
    with torch.no_grad():
        model.word_scores.weight.copy_(torch.randn_like(model.word_scores.weight) * 0.01)
    model.save(tmp_path / "m")
    on_disk = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert "word_scores.weight" not in on_disk and "word_scores.weight.values" in on_disk
    loaded = Tagger.load(tmp_path / "m")
    assert torch.equal(loaded.word_scores.weight, unpack_table(pack_table(model.word_scores.weight),
                                                               tuple(model.word_scores.weight.shape)))
    # a folder of the previous format (dense table) still loads
    on_disk = {k: v for k, v in on_disk.items() if not k.startswith("word_scores.weight.")}
    save_file(on_disk | {"word_scores.weight": model.word_scores.weight.contiguous()},
              str(tmp_path / "m" / "model.safetensors"))
    config = tmp_path / "m" / "config.json"
    config.write_text(config.read_text().replace("mmtags-model/3", "mmtags-model/2"))
    assert torch.equal(Tagger.load(tmp_path / "m").word_scores.weight, model.word_scores.weight)


@pytest.mark.parametrize("vocabulary", ["closed", "open"])
def test_generate_equals_transformers_generate_with_the_same_rules(vocabulary):
    """The project's KV-cache decoding and stock `GPT2LMHeadModel.generate` (with the decoder's rules as
    a logits processor) give the same tags and probabilities: speed costs no quality."""
    cfg = shrink(get_preset("offline"))
    cfg.tag_decoder = vocabulary
    tok = build_tokenizer(cfg, VOCAB, TRAIN_TAGS)
    torch.manual_seed(0)
    model = Tagger(cfg, ["a", "b", "c"], VOCAB, tok).eval()
    with torch.no_grad():  # word scores that steer the decoder, so the bias path is exercised
        model.word_scores.weight.normal_(0, 0.5)
        model.word_scores.intercept.normal_(0, 2)
    out = model(batch(cfg=cfg, tokenizer=tok))
    ours = model.decoder.generate(out["fused"], tag_bias=out["tag_bias"])
    stock = model.decoder.generate_stock(out["fused"], tag_bias=out["tag_bias"])
    assert [[t for t, _ in g] for g in ours] == [[t for t, _ in g] for g in stock]
    assert any(len(g) > 1 for g in ours) or vocabulary == "open"
    if vocabulary == "closed":  # rows finish at different steps: the early-exit path is exercised
        assert len({len(g) for g in ours}) > 1
    kept = model.decoder.generate(out["fused"], tag_bias=out["tag_bias"], early_exit=False)
    assert [[t for t, _ in g] for g in kept] == [[t for t, _ in g] for g in ours]
    for g1, g2 in zip(ours, stock):
        assert all(abs(p1 - p2) < 1e-5 for (_, p1), (_, p2) in zip(g1, g2))
    # fixed shapes (the GPU path): a pre-allocated cache, every row kept to the end; "graphs" runs as
    # "static" on a CPU. The cache is reused by the next batch of the same size, and a smaller batch gets its own.
    for mode in ("static", "graphs"):
        model.decoder.set_decoding(mode)
        for _ in range(2):
            fixed = model.decoder.generate(out["fused"], tag_bias=out["tag_bias"])
            assert [[t for t, _ in g] for g in fixed] == [[t for t, _ in g] for g in ours]
            assert all(abs(p1 - p2) < 1e-5 for g1, g2 in zip(fixed, ours) for (_, p1), (_, p2) in zip(g1, g2))
        part = model.decoder.generate(out["fused"][:3], tag_bias=out["tag_bias"][:3])
        assert [[t for t, _ in g] for g in part] == [[t for t, _ in g] for g in ours[:3]]
    assert sorted(model.decoder._static.caches) == [3, len(ours)]
    # with CUDA graphs (simulated: the eager step stands for the captured one), a smaller batch is padded to
    # the captured size and replays it, rather than capturing its own
    model.decoder.set_decoding("graphs")
    model.decoder.generate(out["fused"], tag_bias=out["tag_bias"])
    model.decoder._static.graphs = True
    part = model.decoder.generate(out["fused"][:3], tag_bias=out["tag_bias"][:3])
    assert [[t for t, _ in g] for g in part] == [[t for t, _ in g] for g in ours[:3]]
    assert sorted(model.decoder._static.caches) == [len(ours)]
    with pytest.raises(ValueError, match="decoding"):
        model.decoder.set_decoding("fast")
    model.decoder.set_decoding("dynamic")
