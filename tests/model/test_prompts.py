"""Prompts are configuration: the paper's prompts to the character on real conversations, whole-string
tokenisation on a SentencePiece (Mistral-shaped) tokenizer, and what each prompt switch changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lavic_ray.cli import main
from lavic_ray.config import PromptsConfig, load_config
from lavic_ray.data.records import parse_turns
from lavic_ray.model.prompts import IGNORE, PromptBuilder, PromptTemplates

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "jobs" / "configs" / "paper_7b.yaml"

# The reference's texts, written out here by hand from ../shared/REFERENCE.md (not read from the config).
HEADER = ("You are an AI assistant specialized in providing personalized product recommendations based on user "
          "conversations. You are given a conversation between a user seeking recommendation (denoted by <submission>) "
          "and other users providing comments (denoted by <comment>). You are also given a set of candidate products with "
          "their IDs, titles and images formatted as \"ID: title\" followed by an image. Among the candidates, recommend "
          "the most relevant product to the seeker. Only reply with its ID, and don't say anything else.\n\n"
          "Conversation:\n{context}\n\nCandidates:\n")
STAGE1 = ("You are a helpful assistant.\nGiven an Amazon product's title and its image, please provide a detailed, "
          "visually grounded description of the product that would help someone decide whether to purchase it. Focus on "
          "the product's appearance, features, and any other visually informative aspects. Do not mention the product's "
          "title in your answer. This product's title is: {title}\n<image><image><image><image><image>\n\nAssistant:")
REAL = [("all_beauty", 0), ("all_beauty", 2), ("amazon_home", 2)]


def _real(reference_data, domain: str, index: int) -> dict:
    return json.loads((reference_data / domain / "valid.jsonl").read_text().splitlines()[index])


def _reference_stage2(conv: dict, titles: dict[str, str]) -> str:
    text = HEADER.replace("{context}", conv["context"])
    for c in conv["candidates_st"]:
        text += f"{c}: {titles[c]}\n" + "<image>" * 5 + "\n"
    return text + "\nAssistant:"


@pytest.fixture()
def titles_file(tmp_path, reference_data) -> tuple[Path, dict[str, str]]:
    """Item metadata for the real conversations' candidates (their titles are not in the reference data)."""
    titles = {}
    for dom, i in REAL:
        for c in _real(reference_data, dom, i)["candidates_st"]:
            titles[c] = f"Product {c} - a title, with (punctuation) & numbers 12 oz"
    f = tmp_path / "items" / "item2meta_train.json"
    f.parent.mkdir()
    f.write_text(json.dumps({c: {"title": t} for c, t in titles.items()}))
    return f, titles


@pytest.mark.parametrize("domain, index", REAL)
def test_paper_stage2_prompt_is_the_reference_template(domain, index, reference_data, titles_file, tmp_path, capsys):
    conv = _real(reference_data, domain, index)
    items, titles = titles_file
    expected = _reference_stage2(conv, titles)
    cfg = load_config(PAPER)
    pairs = [(c, titles[c]) for c in conv["candidates_st"]]
    assert PromptTemplates(cfg.prompts).listwise_prompt(conv["context"], pairs).text == expected
    # the command prints exactly that, nothing else
    convs = tmp_path / "convs.jsonl"
    convs.write_text(json.dumps(conv) + "\n")
    assert main(["prompt", "--config", str(PAPER), "--conversations", str(convs), "--index", "0", "--items", str(items)]) == 0
    assert capsys.readouterr().out == expected


@pytest.mark.parametrize("domain, index", REAL)
def test_paper_stage2_ids_are_the_tokenizer_on_the_whole_text(domain, index, reference_data, titles_file, tmp_path,
                                                               mistral_dir, capsys):
    from transformers import AutoTokenizer

    conv = _real(reference_data, domain, index)
    items, titles = titles_file
    tok = AutoTokenizer.from_pretrained(mistral_dir)
    full = _reference_stage2(conv, titles)
    want = tok(full).input_ids
    assert want[0] == tok.bos_token_id == 1 and want.count(32000) == 50
    convs = tmp_path / "convs.jsonl"
    convs.write_text(json.dumps(conv) + "\n")
    assert main(["prompt", "--config", str(PAPER), "--set", f"model.checkpoint={mistral_dir}", "--conversations", str(convs),
                 "--index", "0", "--items", str(items), "--ids"]) == 0
    assert json.loads(capsys.readouterr().out) == want
    # training: the ID appended directly after "Assistant:", its tokens the only labels, no EOS (the reference's pad is EOS)
    cfg = load_config(PAPER)
    b = PromptBuilder(tok, 32000, 2048, cfg.prompts)
    gt = conv["candidates_st"][3]
    enc = b.listwise(conv["context"], [(c, titles[c]) for c in conv["candidates_st"]], 3)
    assert enc.input_ids == tok(full + gt).input_ids
    assert tok.decode([t for t in enc.labels if t != IGNORE]) == gt and enc.labels[-1] != tok.eos_token_id


def test_paper_stage1_prompt_on_a_real_item(reference_data, mistral_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    row = json.loads((reference_data / "item2meta_valid.jsonl").read_text().splitlines()[0])
    item = row["image_name"].rsplit("_", 1)[0]
    expected = STAGE1.replace("{title}", row["title"])
    assert main(["prompt", "--stage", "1", "--config", str(PAPER), "--item", item, "--items", str(reference_data)]) == 0
    assert capsys.readouterr().out == expected
    tok = AutoTokenizer.from_pretrained(mistral_dir)
    b = PromptBuilder(tok, 32000, 2048, load_config(PAPER).prompts)
    desc = row["image_description_llava_cleaned"]
    enc = b.stage1(row["title"], desc, item)
    assert enc.input_ids == tok(expected + desc).input_ids  # the description appended directly, one tokenisation
    assert tok.decode([t for t in enc.labels if t != IGNORE]) == desc


def test_whole_string_ids_have_no_segment_artefacts_on_sentencepiece(mistral_dir):
    """Segment-by-segment encoding put a lone '▁' at every join on SentencePiece; the builder's ids are the
    tokenizer's on the whole text (default templates too), and continuations split it exactly."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(mistral_dir)
    b = PromptBuilder(tok, 32000, 1024)
    context = "<submission>a teal mug with stripes?</submission>\n<comment>budget?</comment>\n"
    cands = [("B0AAAAAAAA", "Mug one"), ("0306406152", "Mug two")]
    prompt = b.listwise_prompt(context, cands).text
    enc, answers = b.listwise_answers(context, cands)
    assert enc.input_ids == tok(prompt).input_ids
    for (cid, _), a in zip(cands, answers):
        assert enc.input_ids + a == tok(prompt + " " + cid).input_ids
    prefix, blocks = b.pointwise_parts(context, cands)
    for (cid, title), blk in zip(cands, blocks):
        assert prefix.input_ids + blk == tok(b.pointwise_prefix(context).text + b.pointwise_block(cid, title).text).input_ids
    yes, no = b.yes_no_ids()
    assert tok.convert_ids_to_tokens([yes, no]) == ["▁yes", "▁no"]


def test_truncation_rules(mistral_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(mistral_dir)
    long = "<submission>" + "blah " * 400 + "END</submission>"
    cands = [(f"B00000000{i}", f"Title {i}") for i in range(10)]
    cut = PromptBuilder(tok, 32000, 400).listwise(long, cands, 3)  # conversation_start: the candidates and answer stay
    text = tok.decode(cut.input_ids)
    assert len(cut.input_ids) == 400 and cut.n_conversation_tokens_cut > 0 and cut.input_ids.count(32000) == 50
    assert "END" in text and "Title 9" in text and "B000000003" in tok.decode([t for t in cut.labels if t != IGNORE])
    right = PromptBuilder(tok, 32000, 400, PromptsConfig(truncation="right")).listwise(long, cands, 3)
    assert len(right.input_ids) <= 400 and right.input_ids == tok(b_text(tok, long, cands)).input_ids[: len(right.input_ids)]
    assert right.input_ids.count(32000) == 0 and right.images == [] and all(t == IGNORE for t in right.labels)


def b_text(tok, context, cands) -> str:
    b = PromptBuilder(tok, 32000, 400)
    return b.listwise_prompt(context, cands).text + b._answer(3, cands[3][0])


def test_bos_and_eos_switches(mistral_dir, tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(mistral_dir)
    conv = parse_turns("<submission>a mug</submission>")
    cands = [("B000000001", "Mug")]
    default = PromptBuilder(tok, 32000).listwise(conv, cands, 0)
    assert default.input_ids[0] == 1 and default.labels[-1] == tok.eos_token_id  # the tokenizer's BOS; an EOS target
    never = PromptBuilder(tok, 32000, prompts=PromptsConfig(bos="never", target_eos=False)).listwise(conv, cands, 0)
    assert never.input_ids == default.input_ids[1:-1] and never.labels[-1] != tok.eos_token_id
    # SmolLM2-style tokenizers add no BOS: "always" prepends it
    small = PromptBuilder(tiny.tokenizer, tiny.image_token_id, prompts=PromptsConfig(bos="always")).listwise(conv, cands, 0)
    assert small.input_ids[0] == tiny.tokenizer.bos_token_id
    assert PromptBuilder(tiny.tokenizer, tiny.image_token_id).listwise(conv, cands, 0).input_ids == small.input_ids[1:]


def test_templates_are_validated_and_rendered_as_given():
    with pytest.raises(ValueError, match="unknown placeholder"):
        load_config(None, ["prompts.listwise_header='{nope}'"])
    t = PromptTemplates(PromptsConfig(listwise_header="C: {conversation}|", listwise_candidate="[{label}] {title} {image}/",
                                      listwise_cue="?", turn={"submission": "S({text})", "comment": "K({text})"},
                                      turn_separator=";"), answer="letter")
    text = t.listwise_prompt("<submission>hi</submission><comment>yo</comment>", [("X1", "a"), ("X2", "b")]).text
    assert text == "C: S(hi);K(yo)|[A] a " + "<image>" * 5 + "/[B] b " + "<image>" * 5 + "/?"
    assert PromptTemplates(use_images=False).listwise_prompt("x", [("X1", "a")]).text.count("<image>") == 0
