"""The LaViC wrapper: views -> 5 vectors, the splice, masking, scoring."""

import numpy as np
import pytest
import torch
from PIL import Image

from lavic_ray.data.records import parse_turns
from lavic_ray.model.lavic import NUM_VECTORS, LaViC
from lavic_ray.model.prompts import IGNORE, PromptBuilder, collate
from lavic_ray.model.scoring import parse_answer, score_listwise, score_pointwise


@pytest.fixture()
def model(tiny):
    return LaViC(tiny.model, tiny.image_token_id).eval()


def views(tiny, sizes):
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    out = tiny.image_processor(ims, return_tensors="pt")
    return out["pixel_values"], out["image_sizes"]


def test_views_3_4_5_and_missing_images_give_five_defined_vectors(tiny, model):
    # tiny tower: input 32; (w, h): 64x64 -> 2x2 grid (5 views), 32x96 -> 1x3 (4), 32x32 -> 1x2 (3)
    px, sizes = views(tiny, [(64, 64), (32, 96), (32, 32), (64, 64)])
    n = model.num_real_views(sizes)
    assert n.tolist() == [5, 4, 3, 5]
    present = torch.tensor([True, True, True, False])
    with torch.no_grad():
        v = model.image_vectors(px, sizes, present)
    assert v.shape == (4, NUM_VECTORS, model.hidden_size)
    assert torch.isfinite(v).all()
    # fill rule: slots past the real views repeat the base view
    assert torch.equal(v[1, 4], v[1, 0]) and not torch.equal(v[1, 3], v[1, 0])
    assert torch.equal(v[2, 3], v[2, 0]) and torch.equal(v[2, 4], v[2, 0])
    # a missing image: five zeros
    assert torch.count_nonzero(v[3]) == 0
    # real vectors are rescaled to the text-embedding norm
    torch.testing.assert_close(v[0].norm(dim=-1), model.text_norm.expand(5), rtol=1e-4, atol=1e-5)


def test_vectors_are_the_projected_cls_of_each_view(tiny, model):
    px, sizes = views(tiny, [(64, 64)])
    base = tiny.model
    with torch.no_grad():
        hidden = base.model.vision_tower(px[0], output_hidden_states=True).hidden_states[-2]
        ref = base.model.multi_modal_projector(hidden[:, 0])
        v = model.image_vectors(px, sizes)
    torch.testing.assert_close(v[0], model.scale(ref), rtol=1e-4, atol=1e-5)


def test_splice_places_each_vector_where_it_belongs(tiny, model):
    img = tiny.image_token_id
    ids = torch.tensor([
        [5, img, img, img, img, img, 7, img, img, img, img, img, 9],
        [3, 3, 3, 3, 3, 3, 3, img, img, img, img, img, 8],
    ])
    vectors = torch.randn(3, NUM_VECTORS, model.hidden_size)
    out = model.embed(ids, vectors)
    table = tiny.model.get_input_embeddings().weight
    # hand-built reference: walk the placeholders in order
    expected = table[ids.masked_fill(ids == img, 0)].clone()
    k = 0
    flat = vectors.reshape(-1, model.hidden_size)
    for r in range(ids.shape[0]):
        for c in range(ids.shape[1]):
            if ids[r, c] == img:
                expected[r, c] = flat[k]
                k += 1
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="placeholder"):
        model.embed(ids, vectors[:2])


@pytest.mark.parametrize("side", ["left", "right"])
def test_label_masking_per_row_any_padding_side(tiny, side):
    b = PromptBuilder(tiny.tokenizer, tiny.image_token_id, max_length=400)
    turns = parse_turns("<submission>need a mug</submission>")
    cands = [("B000000001", "Mug A"), ("0306406152", "Mug B")]
    e1 = b.listwise(turns, cands, 1)
    e2 = b.stage1("A long title for a mug", "A red mug with a white star emblem.", "B000000001")
    batch = collate([e1, e2], tiny.tokenizer.pad_token_id, side)
    eos = tiny.tokenizer.eos_token_id
    for row, enc in enumerate([e1, e2]):
        labels = batch.labels[row]
        keep = labels != IGNORE
        target = [t for t in enc.labels if t != IGNORE]
        assert labels[keep].tolist() == target and target[-1] == eos
        # the labelled tokens are exactly the row's target tokens, at the row's own positions
        assert batch.input_ids[row][keep].tolist() == target
        assert int(batch.attention_mask[row].sum()) == len(enc.input_ids)
    assert b.tok.decode([t for t in e1.labels if t != IGNORE][:-1]).strip() == "0306406152"
    assert batch.images == ["B000000001", "0306406152", "B000000001"]


def test_truncation_cuts_only_the_conversation_start(tiny):
    b = PromptBuilder(tiny.tokenizer, tiny.image_token_id, max_length=300)
    long = "<submission>" + "blah " * 400 + "END</submission>"
    cands = [(f"B00000000{i}", f"Title {i}") for i in range(10)]
    e = b.listwise(parse_turns(long), cands, 3)
    assert len(e.input_ids) <= 300 and e.n_conversation_tokens_cut > 0
    assert e.input_ids.count(tiny.image_token_id) == 10 * NUM_VECTORS
    text = b.tok.decode(e.input_ids)
    assert "END" in text and "Answer:" in text and all(f"Title {i}" in text for i in range(10))
    with pytest.raises(ValueError, match="max_length"):
        PromptBuilder(tiny.tokenizer, tiny.image_token_id, max_length=40).listwise(parse_turns(long), cands, 3)


def test_title_only_prompts_have_no_placeholders(tiny):
    b = PromptBuilder(tiny.tokenizer, tiny.image_token_id, use_images=False)
    e = b.listwise(parse_turns("<submission>x</submission>"), [("B000000001", "Mug")], 0)
    assert tiny.image_token_id not in e.input_ids and e.images == []


def _planted_model(tiny, answer_text):
    """Raise the output logits of one answer's tokens, so that answer must rank first."""
    ids = tiny.tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    bias = torch.zeros(tiny.model.config.text_config.vocab_size)
    bias[ids] = 30.0
    tiny.model.lm_head.register_forward_hook(lambda module, inputs, out: out + bias)
    return LaViC(tiny.model, tiny.image_token_id).eval()


def test_listwise_scoring_ranks_a_planted_answer_first(tiny):
    # the planted answer shares no token with the others, so only it gains
    model = _planted_model(tiny, " 7777777777")
    b = PromptBuilder(tiny.tokenizer, tiny.image_token_id, max_length=400)
    cands = [("B0AAAAAAAA", "A"), ("7777777777", "B"), ("B0CCCCCCCC", "C")]
    vec = torch.randn(3, NUM_VECTORS, model.hidden_size)
    scores = score_listwise(model, b, parse_turns("<submission>x</submission>"), cands, lambda ids: vec[: len(ids)])
    assert max(range(3), key=lambda i: scores[i]) == 1


def test_prefix_cached_scores_equal_full_recomputation(tiny, model):
    b = PromptBuilder(tiny.tokenizer, tiny.image_token_id, max_length=400)
    turns = parse_turns("<submission>a teal mug with stripes</submission><comment>ok</comment>")
    cands = [("B000000001", "Mug A"), ("0306406152", "Mug B"), ("B000000003", "Mug C")]
    vec = torch.randn(3, NUM_VECTORS, model.hidden_size)
    order = [c[0] for c in cands]

    def lookup(ids):
        return torch.stack([vec[order.index(i)] for i in ids])

    cached = score_listwise(model, b, turns, cands, lookup)
    with torch.no_grad():
        for i, c in enumerate(cands):
            enc = b.listwise(turns, cands, i)
            ids = torch.tensor([enc.input_ids])
            logits = model(ids, torch.ones_like(ids), lookup(enc.images)).logits[0].log_softmax(-1)
            answer = b.listwise_answers(turns, cands)[1][i]
            start = len(enc.input_ids) - len(answer) - 1  # before EOS
            full = sum(float(logits[start - 1 + j, t]) for j, t in enumerate(answer))
            assert cached[i] == pytest.approx(full, abs=1e-3)
    point = score_pointwise(model, b, turns, cands, lookup)
    with torch.no_grad():
        yes, no = b.yes_no_ids()
        for i, c in enumerate(cands):
            enc = b.pointwise(turns, c[0], c[1], None)
            ids = torch.tensor([enc.input_ids])
            lp = model(ids, torch.ones_like(ids), lookup(enc.images)).logits[0, -1].log_softmax(-1)
            assert point[i] == pytest.approx(float(lp[yes] - lp[no]), abs=1e-3)


def test_parse_answer_accepts_isbn_ids():
    cands = ["B000000001", "030640615X", "B000000003"]
    assert parse_answer("The answer is 030640615X.", cands) == ["030640615X"]
    assert parse_answer("b000000003 then B000000001", cands) == ["B000000003", "B000000001"]
    assert parse_answer("B0ZZZZZZZZ", cands, catalog_ids={"B0ZZZZZZZZ"}) == ["B0ZZZZZZZZ"]
    assert parse_answer("nothing here", cands) == []
    assert parse_answer(" B", cands, letters=True) == ["030640615X"]


def test_batched_left_padded_generation_matches_one_by_one(tiny, model):
    from lavic_ray.model.scoring import generate_batch

    b = PromptBuilder(tiny.tokenizer, tiny.image_token_id)
    encs = [b.stage1("Mug", None, "a"), b.stage1("A much longer title for a vase with many words", None, "b")]
    vec = torch.randn(2, NUM_VECTORS, model.hidden_size)
    together = generate_batch(model, b, encs, lambda keys: vec, max_new_tokens=6)
    alone = [generate_batch(model, b, [e], lambda keys, i=i: vec[i: i + 1], max_new_tokens=6)[0] for i, e in enumerate(encs)]
    assert together == alone


def test_view_cache_pads_images_tiled_in_different_calls(tiny, tmp_path):
    from lavic_ray.model.views import ViewCache

    rng = np.random.default_rng(1)
    paths = []
    for name, (w, h) in {"a.png": (32, 32), "b.png": (64, 64)}.items():  # 3 views, 5 views
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
        paths.append(tmp_path / name)
    cache = ViewCache(tiny.image_processor, max_items=8)
    cache.get([paths[0]])  # tiled alone: padded to its own 3 views
    px, sizes, present = cache.get([paths[0], paths[1]])
    assert px.shape[:2] == (2, 5) and present.tolist() == [True, True]
    assert torch.count_nonzero(px[0, 3:]) == 0 and torch.count_nonzero(px[1, 4]) > 0


def test_batched_scoring_matches_one_request_at_a_time(tiny, model):
    from lavic_ray.model.formulations import score_batch

    b = PromptBuilder(tiny.tokenizer, tiny.image_token_id, max_length=400)
    ids = ["B000000001", "0306406152", "B000000003", "B000000004"]
    vec = {i: torch.randn(NUM_VECTORS, model.hidden_size) for i in ids}

    def lookup(keys):
        return torch.stack([vec[k] for k in keys])

    requests = [
        (parse_turns("<submission>a teal mug with stripes and a long story about it</submission><comment>ok</comment>"),
         [(i, f"Mug {i}") for i in ids]),
        (parse_turns("<submission>vase</submission>"), [(ids[2], "Vase"), (ids[0], "Other")]),
        (parse_turns("<submission>lamp please</submission>"), [(ids[3], "Lamp")]),
    ]
    for formulation in ("listwise", "pointwise"):
        together = score_batch(model, b, formulation, requests, lookup, max_rows=3)  # chunks cross requests
        alone = [score_batch(model, b, formulation, [r], lookup)[0] for r in requests]
        for t, a in zip(together, alone):
            assert t == pytest.approx(a, abs=1e-3)
    assert score_batch(model, b, "listwise", [], lookup) == []


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_pointwise_prefix_sharing_modes_agree_in_values_and_gradients(tiny, attn):
    """packed (block mask), cache (KV copies) and none (one sequence per candidate) compute the same thing."""
    from lavic_ray.model.lora import add_lora
    from lavic_ray.config import LoraConfig
    from lavic_ray.model.scoring import pointwise_log_probs, resolve_sharing

    tiny.model.config.get_text_config()._attn_implementation = attn
    vlm = add_lora(tiny.model, "llm", LoraConfig(r=4, alpha=8, dropout=0.0))
    model = LaViC(vlm, tiny.image_token_id).train()
    for p in model.parameters():  # LoRA B starts at zero: make the adapter matter
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    b = PromptBuilder(tiny.tokenizer, tiny.image_token_id, max_length=400)
    ids = ["B000000001", "0306406152", "B000000003"]
    vec = {i: torch.randn(NUM_VECTORS, model.hidden_size) for i in ids}

    def lookup(keys):
        return torch.stack([vec[k] for k in keys])

    requests = [(parse_turns("<submission>a teal mug with stripes, please</submission><comment>ok</comment>"),
                 [(i, f"Mug {i}") for i in ids]),
                (parse_turns("<submission>vase</submission>"), [(ids[1], "Vase with a much longer title here")])]
    assert resolve_sharing(model) == "packed"
    results = {}
    for mode in ("packed", "cache", "none"):
        model.zero_grad()
        lp, tokens = model(fn=pointwise_log_probs, builder=b, requests=requests, lookup=lookup, max_rows=None, sharing=mode)
        (lp[:, 0].sum() - lp[1, 1]).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n}
        results[mode] = (lp.detach(), tokens, grads)
    packed, cache, none = results["packed"], results["cache"], results["none"]
    assert packed[0].shape == (4, 2)
    for other in (cache, none):
        assert torch.allclose(packed[0], other[0], atol=1e-4)
        assert all(torch.allclose(packed[2][n], other[2][n], atol=1e-4) for n in packed[2])
    assert packed[1] == cache[1] < none[1]  # the first conversation ran once, not three times
    assert any(float(g.abs().sum()) > 0 for g in packed[2].values())
    # chunks of at most 2 candidates: a request's candidates stay together
    model.zero_grad()
    chunked, _ = model(fn=pointwise_log_probs, builder=b, requests=requests, lookup=lookup, max_rows=2, sharing="packed")
    assert torch.allclose(chunked, packed[0], atol=1e-4)
    # a request without candidates scores nothing and leaves the others' rows in place
    with torch.no_grad():
        for mode in ("packed", "cache", "none"):
            lp, _ = model(fn=pointwise_log_probs, builder=b, requests=[requests[0], (requests[1][0], []), requests[1]],
                          lookup=lookup, max_rows=None, sharing=mode)
            assert torch.allclose(lp, packed[0], atol=1e-4), mode
    with pytest.raises(ValueError, match="gradient checkpointing"):
        resolve_sharing(model, "cache", gradient_checkpointing=True)
    tiny.model.config.get_text_config()._attn_implementation = "flash_attention_2"
    assert resolve_sharing(model) == "cache" and resolve_sharing(model, gradient_checkpointing=True) == "none"
    tiny.model.config.get_text_config()._attn_implementation = "sdpa"


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_listwise_prefix_sharing_modes_agree(tiny, attn):
    """Listwise answers scored packed after the prompt, from copied KV caches, or one sequence each: the same scores,
    and the scores are the answers' log-likelihoods under a plain forward pass."""
    from lavic_ray.config import LoraConfig
    from lavic_ray.model.lora import add_lora
    from lavic_ray.model.scoring import score_listwise_batch

    tiny.model.config.get_text_config()._attn_implementation = attn
    vlm = add_lora(tiny.model, "llm", LoraConfig(r=4, alpha=8, dropout=0.0))
    model = LaViC(vlm, tiny.image_token_id).eval()
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    ids = ["B000000001", "0306406152", "B000000003", "B000000004"]
    vec = {i: torch.randn(NUM_VECTORS, model.hidden_size) for i in ids}

    def lookup(keys):
        return torch.stack([vec[k] for k in keys])

    requests = [(parse_turns("<submission>a teal mug with stripes, please</submission><comment>ok</comment>"),
                 [(i, f"Mug {i}") for i in ids]),
                (parse_turns("<submission>vase</submission>"), []),
                (parse_turns("<submission>vase</submission>"), [(ids[1], "Vase with a longer title"), (ids[3], "Lamp")])]
    for answer in ("id", "letter"):
        b = PromptBuilder(tiny.tokenizer, tiny.image_token_id, max_length=400, answer=answer)
        got = {(mode, rows): score_listwise_batch(model, b, requests, lookup, max_rows=rows, sharing=mode)
               for mode in ("packed", "cache", "none") for rows in (64, 3)}
        packed = got["packed", 64]
        assert [len(s) for s in packed] == [4, 0, 2]
        for key, scores in got.items():
            for x, y in zip(scores, packed, strict=True):
                assert x == pytest.approx(y, abs=1e-4), key
        # the reference: one plain pass over prompt + answer per candidate
        turns, cands = requests[2]
        enc, answers = b.listwise_answers(turns, cands)
        assert enc.input_ids == b.listwise(turns, cands, None).input_ids
        for i, a in enumerate(answers):
            x = torch.tensor([enc.input_ids + a])
            with torch.no_grad():
                logits = model(x, torch.ones_like(x), lookup(enc.images)).logits.float()
            logp = torch.log_softmax(logits[0, len(enc.input_ids) - 1: -1], -1)
            assert packed[2][i] == pytest.approx(float(logp.gather(1, torch.tensor(a)[:, None]).sum()), abs=1e-4)
    tiny.model.config.get_text_config()._attn_implementation = "sdpa"


@pytest.mark.parametrize("side", ["right", "left"])
def test_labelled_loss_equals_the_full_sequence_loss_and_its_gradients(tiny, side):
    """The output layer at the labelled positions only gives the Hugging Face loss and gradients."""
    from lavic_ray.config import LoraConfig
    from lavic_ray.model.lora import add_lora

    torch.manual_seed(0)
    m = LaViC(add_lora(tiny.model, "llm", LoraConfig(r=4, alpha=8, dropout=0.0)), tiny.image_token_id)
    b = PromptBuilder(tiny.tokenizer, tiny.image_token_id, max_length=400)
    turns = parse_turns("<submission>need a red mug</submission><comment>striped?</comment>")
    encs = [b.listwise(turns, [("B000000001", "Mug A"), ("0306406152", "Mug B")], 1),
            b.listwise(parse_turns("<submission>a blue vase please</submission>"), [("B000000001", "Mug A"), ("0306406152", "Mug B")], 0)]
    batch = collate(encs, tiny.tokenizer.pad_token_id, side)
    vectors = torch.randn(len(batch.images), NUM_VECTORS, m.hidden_size)
    ours = m(batch.input_ids, batch.attention_mask, vectors=vectors, labels=batch.labels).loss
    g_ours = torch.autograd.grad(ours, [p for p in m.parameters() if p.requires_grad])
    embeds = m.embed(batch.input_ids, vectors)
    hf = m.vlm(inputs_embeds=embeds, attention_mask=batch.attention_mask, labels=batch.labels).loss
    g_hf = torch.autograd.grad(hf, [p for p in m.parameters() if p.requires_grad])
    assert torch.allclose(ours, hf, atol=1e-5)
    assert all(torch.allclose(a, c, atol=1e-6) for a, c in zip(g_ours, g_hf))
