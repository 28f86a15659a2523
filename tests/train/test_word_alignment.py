"""stage1.word_alignment: the stage-1 term that pulls an image's vectors towards its own description's words."""

import math

import torch
import torch.nn.functional as F

from lavic_ray.train.run import run_local
from lavic_ray.model.alignment import description_targets, word_alignment_loss
from tests.train.test_loop import tiny_cfg


class WordTokenizer:
    """One id per whitespace-separated word (enough to check the targets' arithmetic)."""

    eos_token_id = 0

    def __init__(self, words):
        self.ids = {w: i + 1 for i, w in enumerate(words)}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.ids[w] for w in text.split()]}


def test_targets_cancel_what_every_description_shares():
    words = ["a", "red", "blue", "mug"]
    tok = WordTokenizer(words)
    emb = torch.eye(5)  # id 0 (EOS) + one axis per word
    t = description_targets(["a red mug", "a blue mug"], tok, emb)
    assert torch.allclose(t.norm(dim=-1), torch.ones(2))
    # "a" and "mug" are in both: only the colour axes remain, with opposite signs
    assert torch.allclose(t[0], torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0]) / math.sqrt(2))
    assert torch.allclose(t[1], -t[0])


def test_loss_is_low_for_vectors_on_their_own_description_and_high_off_it():
    targets = F.normalize(torch.randn(6, 16), dim=-1)
    rows = torch.tensor([2, 4])
    present = torch.tensor([True, True])
    on = targets[rows][:, None].expand(-1, 5, -1) * 3.0  # any norm: the loss reads directions
    off = targets[torch.tensor([4, 2])][:, None].expand(-1, 5, -1)
    low = word_alignment_loss(on, present, targets, rows, temperature=0.1, negatives=100)
    high = word_alignment_loss(off, present, targets, rows, temperature=0.1, negatives=100)
    assert float(low) < 0.5 < float(high)


def test_loss_skips_missing_images_and_caps_its_negatives():
    targets = F.normalize(torch.randn(50, 8), dim=-1)
    rows = torch.tensor([1, 7])
    vectors = torch.randn(2, 5, 8, requires_grad=True)
    none = word_alignment_loss(vectors, torch.tensor([False, False]), targets, rows, 0.1, 10)
    assert float(none.detach()) == 0.0
    one = word_alignment_loss(vectors, torch.tensor([True, False]), targets, rows, 0.1, 3)
    one.backward()
    assert vectors.grad[1].abs().sum() == 0 and vectors.grad[0].abs().sum() > 0  # the missing image gets no gradient
    # 3 negatives: the columns are the batch's 2 own rows and 3 others; equal scores give log(5)
    flat = word_alignment_loss(torch.zeros(2, 5, 8), torch.tensor([True, True]), targets, rows, 0.1, 3)
    assert math.isclose(float(flat), math.log(2 + 3), rel_tol=1e-5)


def test_stage1_with_word_alignment_trains_and_keeps_its_validation_metric(tmp_path, tiny_dir, synth_root):
    out = tmp_path / "s1"
    res = run_local("stage1", tiny_cfg(tiny_dir, "stage1.max_steps=2", "stage1.word_alignment=0.5", root=synth_root), out)
    assert res["step"] == 2
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert math.isfinite(res["valid_ppl"])  # validation stays the description perplexity alone
