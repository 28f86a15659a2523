"""The small model's vision-side training (run here on the tiny checkpoint: the same code path)."""

import torch

from lavic_ray.data.layout import Catalog
from lavic_ray.model.small import align_projector, train_vision_side


def _llm_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "language_model" in n and "embed" not in n}


def _vision_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n}


def test_full_token_step_tunes_the_llm_through_merged_lora(tiny, synth_root):
    llm, vision = _llm_weights(tiny.model), _vision_weights(tiny.model)
    history = train_vision_side(tiny, Catalog.load(synth_root), epochs=1, batch_size=4, max_images=8, llm_lora_r=4)
    assert len(history) == 1 and torch.isfinite(torch.tensor(history)).all()
    model = tiny.model
    # the adapter is merged: a plain LLaVA-Next again, that save_pretrained writes as any checkpoint
    assert type(model).__name__ == "LlavaNextForConditionalGeneration"
    assert not any("lora_" in n for n, _ in model.named_parameters())
    after_llm, after_vision = _llm_weights(model), _vision_weights(model)
    assert set(after_llm) == set(llm)
    assert any(not torch.equal(llm[n], after_llm[n]) for n in llm if "proj" in n)  # merged LoRA moved the LLM
    assert any(not torch.equal(vision[n], after_vision[n]) for n in vision)  # the vision side trained in full
    assert not any(p.requires_grad for p in model.parameters())


def test_full_token_step_can_keep_the_llm_frozen(tiny, synth_root):
    llm = _llm_weights(tiny.model)
    train_vision_side(tiny, Catalog.load(synth_root), epochs=1, batch_size=4, max_images=4, llm_lora_r=0)
    after = _llm_weights(tiny.model)
    assert all(torch.equal(llm[n], after[n]) for n in llm)


def test_full_token_step_keeps_the_tower_frozen(tiny, synth_root):
    before = _vision_weights(tiny.model)
    train_vision_side(tiny, Catalog.load(synth_root), epochs=1, batch_size=4, max_images=4, llm_lora_r=0)
    after = _vision_weights(tiny.model)
    tower = [n for n in before if "vision_tower" in n]
    assert tower and all(torch.equal(before[n], after[n]) for n in tower)  # LLaVA's recipe: the tower stays as it was
    assert any(not torch.equal(before[n], after[n]) for n in before if "multi_modal_projector" in n)


def test_a_step_budget_stops_the_full_token_step_and_ends_its_schedule_there(tiny, synth_root, tmp_path):
    import json

    progress = tmp_path / "progress.json"
    # 8 images in batches of 4: 2 steps an epoch, 3 epochs = 6 steps; the budget: 3 (one epoch and a half)
    history = train_vision_side(tiny, Catalog.load(synth_root), epochs=3, batch_size=4, max_images=8, llm_lora_r=0,
                                progress_file=progress, max_steps=3)
    assert len(history) == 2 and torch.isfinite(torch.tensor(history)).all()
    assert json.loads(progress.read_text())["step"] == 3 and json.loads(progress.read_text())["total"] == 3


def test_a_budget_that_does_not_bind_changes_nothing(tiny_dir, synth_root):
    """The quickstart's budgets equal the default catalog's own steps: its build must train exactly as before."""
    from lavic_ray.model.checkpoints import load_checkpoint

    runs = []
    for budget in (None, 4):  # 8 images in batches of 4, 2 epochs: 4 steps either way
        ck = load_checkpoint(str(tiny_dir))
        torch.manual_seed(0)
        history = train_vision_side(ck, Catalog.load(synth_root), epochs=2, batch_size=4, max_images=8, llm_lora_r=0,
                                    max_steps=budget)
        runs.append((history, _vision_weights(ck.model)))
    (h0, w0), (h1, w1) = runs
    assert h0 == h1 and all(torch.equal(w0[n], w1[n]) for n in w0)


def test_the_projector_alignment_trains_the_projector_alone_towards_the_descriptions_words(tiny, synth_root):
    """The build's first step on a pretrained tower: only the projector moves, and its images come to pick their own
    description among the others' (on 12 items, which the tiny random tower's features can tell apart: the InfoNCE
    loss falls from about ln 12)."""
    items = list(Catalog.load(synth_root))[:12]
    before = {n: p.detach().clone() for n, p in tiny.model.named_parameters()}
    history = align_projector(tiny, items, steps=100, lr=1e-2, batch_size=12)
    assert len(history) == 10 and history[0] > 2.0 and history[-1] < 0.6 * history[0], history
    moved = {n for n, p in tiny.model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert moved and all("multi_modal_projector" in n for n in moved)


def test_the_build_aligns_the_projector_first_then_reads_full_tokens_and_records_what_ran(tiny_dir, synth_root, tmp_path,
                                                                                          monkeypatch):
    import json

    import lavic_ray.model.small as small
    from lavic_ray.model.checkpoints import load_checkpoint

    calls = []
    monkeypatch.setattr(small, "build_small_base", lambda **kw: calls.append(("base", kw)) or load_checkpoint(str(tiny_dir)))
    monkeypatch.setattr(small, "align_projector", lambda ck, cat, **kw: calls.append(("align",)) or [])
    monkeypatch.setattr(small, "train_vision_side", lambda *a, **kw: calls.append(("full-token", kw["max_steps"])) or [])
    out = small.build_small_model(synth_root, tmp_path / "small", vision_image_size=112, step_budget=7)
    assert calls == [("base", {"vision_image_size": 112, "seed": 0}), ("align",), ("full-token", 7)]
    record = json.loads((out / "lavic_small_model.json").read_text())
    assert record["vision_image_size"] == 112 and record["step_budget"] == 7 and "DINOv2" in record["vision"]
