"""The LaViC wrapper around a LLaVA-Next model: 5 vectors per image, spliced into the LLM's input.

**Five vectors per image.** LLaVA-Next tiles an image into a base view plus up to
4 grid crops (1 + 2, 1 + 3 or 1 + 4 views, by size and aspect). Vector ``k`` is the
[CLS] token of view ``k`` at ``model.feature_layer`` (-2, the layer the projector was
trained on; -1 is the tower's ``last_hidden_state``, before its post-layernorm, as the
reference takes it), passed through the multimodal projector. The rule for fewer views,
stated once (``model.empty_views``):

* slot 0 is the base view, slots 1..4 the grid crops in LLaVA-Next's order;
* ``repeat_base`` (lavic-ray): an image with ``n < 5`` real views repeats its base-view
  vector in slots ``n..4``; ``run_padded`` (the reference): the zero-padded views run
  through the tower like real ones;
* a missing image gives five zero vectors (the placeholders then carry only position);
  ``model.missing_image: white_image`` instead runs a white image (see
  :func:`lavic_ray.model.views.pixel_views`).

**Scale** (``model.scale_vectors``). Projected [CLS] vectors can be 100-1000x the norm of
text token embeddings, which swamps attention. Each vector is rescaled to the mean norm of
the language model's input embedding rows (direction unchanged, zero stays zero); the
reference does not rescale.

**Splice.** Every image occupies 5 consecutive ``<image>`` placeholder tokens; the
vectors replace them with one ``masked_scatter`` over the batch, in order of
appearance (row-major over batch and position).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_VECTORS = 5


def _unwrap(vlm: nn.Module) -> nn.Module:
    """The LlavaNextForConditionalGeneration inside a PEFT wrapper (or the model itself)."""
    get = getattr(vlm, "get_base_model", None)
    return get() if callable(get) else vlm


def gathered(params: list):
    """A context in which ZeRO-3-sharded parameters are whole (``deepspeed.zero.GatheredParameters``, a collective
    every rank enters); nothing to do for ordinary parameters."""
    import contextlib

    sharded = [p for p in params if hasattr(p, "ds_id")]
    if not sharded:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(sharded, modifier_rank=None)


class LaViC(nn.Module):
    """LaViC over a (possibly LoRA-wrapped) ``LlavaNextForConditionalGeneration``.

    Args:
        vlm: The model (a PEFT model wrapping one is fine).
        image_token_id: The placeholder token id (``config.image_token_id``).
        feature_layer: Vision hidden-state layer whose [CLS] is taken (LLaVA's -2 by default).
        scale_vectors: Rescale vectors to the text-embedding norm (see module docs).
        empty_views: ``repeat_base`` (the fill rule above) or ``run_padded``: the slots past an image's
            real views get the vectors of the zero-padded views run through the tower (the reference's way).
    """

    def __init__(self, vlm: nn.Module, image_token_id: int, feature_layer: int | None = None, scale_vectors: bool = True,
                 empty_views: str = "repeat_base"):
        super().__init__()
        self.vlm = vlm
        self.image_token_id = int(image_token_id)
        base = _unwrap(vlm)
        self.config = base.config
        self.feature_layer = feature_layer if feature_layer is not None else int(
            base.config.vision_feature_layer if isinstance(base.config.vision_feature_layer, int) else -2
        )
        self.scale_vectors = scale_vectors
        if empty_views not in ("repeat_base", "run_padded"):
            raise ValueError(f"empty_views must be 'repeat_base' or 'run_padded', got {empty_views!r}")
        self.empty_views = empty_views
        weight = base.get_input_embeddings().weight
        with torch.no_grad(), gathered([weight]):  # under ZeRO-3 the embeddings are sharded
            norm = weight.float().norm(dim=-1).mean()
        self.register_buffer("text_norm", norm.detach().clone(), persistent=False)

    # ------------------------------------------------------------------ parts
    @property
    def base(self) -> nn.Module:
        return _unwrap(self.vlm)

    @property
    def hidden_size(self) -> int:
        return int(self.base.config.text_config.hidden_size)

    def num_real_views(self, image_sizes: torch.Tensor) -> torch.Tensor:
        """Real LLaVA-Next views per image (1 + grid crops), from ``(N, 2)`` (height, width) sizes."""
        from lavic_ray.model.views import num_real_views

        return num_real_views(self.base.config, image_sizes, NUM_VECTORS)

    def scale(self, vectors: torch.Tensor) -> torch.Tensor:
        if not self.scale_vectors:
            return vectors
        return F.normalize(vectors, dim=-1) * self.text_norm.to(vectors.dtype)

    def image_vectors(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None, present: torch.Tensor | None = None,
                      n_views: torch.Tensor | None = None) -> torch.Tensor:
        """The 5 vectors of each image.

        Args:
            pixel_values: ``(N, V, 3, H, W)`` LLaVA-Next views (padded views are ignored).
            image_sizes: ``(N, 2)`` original (height, width).
            present: ``(N,)`` bool; False marks a missing image (five zero vectors).
            n_views: ``(N,)`` real views per image, when known already (views from ``lavic preprocess``);
                otherwise derived from ``image_sizes``.

        Returns:
            ``(N, 5, hidden)`` in the language model's embedding space.
        """
        N, V = pixel_values.shape[:2]
        device = pixel_values.device
        n = (n_views if n_views is not None else self.num_real_views(image_sizes)).to(device)
        if present is None:
            present = torch.ones(N, dtype=torch.bool, device=device)
        present = present.to(device)
        if self.empty_views == "run_padded":  # every slot through the tower, zero views included (padded to 5)
            if V < NUM_VECTORS:
                pixel_values = torch.cat([pixel_values, pixel_values.new_zeros(N, NUM_VECTORS - V, *pixel_values.shape[2:])], 1)
            n = torch.full_like(n, NUM_VECTORS)
            V = NUM_VECTORS
        slots = torch.arange(NUM_VECTORS, device=device)
        valid = (slots[None, : min(V, NUM_VECTORS)] < n[:, None]) & present[:, None]
        out = torch.zeros(N, NUM_VECTORS, self.hidden_size, device=device, dtype=self.base.dtype)
        if valid.any():
            views = pixel_values[:, : min(V, NUM_VECTORS)][valid].to(self.base.dtype)
            hidden = self.base.model.vision_tower(views, output_hidden_states=True).hidden_states[self.feature_layer]
            projected = self.base.model.multi_modal_projector(hidden[:, 0])
            out = out.clone()
            out[:, : min(V, NUM_VECTORS)][valid] = projected.to(out.dtype)
            # fill rule: slots past an image's real views repeat its base view
            idx = torch.where(slots[None, :] < n[:, None], slots[None, :], torch.zeros_like(slots)[None, :])
            out = out.gather(1, idx[..., None].expand(-1, -1, out.shape[-1]))
        return self.scale(out)

    def embed(self, input_ids: torch.Tensor, vectors: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with each group of 5 placeholders replaced by its image's vectors.

        Args:
            input_ids: ``(B, L)``.
            vectors: ``(M, 5, hidden)`` for the M images in order of appearance, or None
                when the batch holds no placeholders.
        """
        mask = input_ids == self.image_token_id
        safe_ids = input_ids.masked_fill(mask, 0)
        embeds = self.base.get_input_embeddings()(safe_ids)
        n_slots = int(mask.sum())
        n_vec = 0 if vectors is None else vectors.shape[0] * vectors.shape[1]
        if n_slots != n_vec:
            raise ValueError(f"{n_slots} image placeholder tokens but {n_vec} vectors ({n_vec // NUM_VECTORS} images)")
        if n_slots:
            embeds = embeds.masked_scatter(mask[..., None], vectors.reshape(-1, vectors.shape[-1]).to(embeds.dtype))
        return embeds

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids=None, attention_mask=None, vectors=None, labels=None, pixel_values=None, image_sizes=None,
                present=None, fn=None, **kwargs):
        """Language-model forward over spliced embeddings; ``loss`` when labels are given.

        Give either ``vectors`` (stage 2, read from the embedding table) or the pixel
        views (stage 1: ``pixel_values``, ``image_sizes``, ``present``), whose vectors are
        computed here so that gradients reach the vision side.

        ``fn(self, **kwargs)`` instead runs a computation made of several passes (such as
        :func:`lavic_ray.model.scoring.pointwise_log_probs`: a prefix, then continuations
        from its cache) inside this forward, so that a DDP or DeepSpeed wrapper sees one
        forward call and synchronises the gradients of all of it.
        """
        if fn is not None:
            return fn(self, **kwargs)
        if pixel_values is not None:
            vectors = self.image_vectors(pixel_values, image_sizes, present)
        embeds = self.embed(input_ids, vectors)
        if labels is not None and not kwargs:
            return self.labelled_loss(embeds, attention_mask, labels)
        return self.vlm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    def labelled_loss(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor):
        """Causal-LM loss with the output layer applied at the labelled positions only
        (see :func:`labelled_lm_loss`)."""
        from transformers.modeling_outputs import CausalLMOutput

        return CausalLMOutput(loss=labelled_lm_loss(self.base, embeds, attention_mask, labels))


def labelled_lm_loss(llava, embeds: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
    """Causal-LM loss of a LLaVA-Next over input embeddings, the output layer at labelled positions only.

    The same value and gradients as the Hugging Face loss (mean token NLL over the
    positions whose next-token label is not -100), but the ``(tokens, vocabulary)``
    logits are computed for those positions instead of the whole sequence: a stage-2
    target is the answer and its EOS out of hundreds of prompt tokens, and on the
    small model (vocabulary 49k, width 576) the full-sequence output layer and its
    fp32 log-softmax were the largest avoidable cost of a CPU step (bench/RESULTS.md).
    LoRA layers injected by PEFT live inside the modules, so they apply here too.
    """
    hidden = llava.model.language_model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = llava.lm_head(hidden[:, :-1][keep]).float()
    return F.cross_entropy(logits, targets[keep]) if logits.shape[0] else logits.sum() * 0.0


def full_token_features(model, px: torch.Tensor, sizes: torch.Tensor) -> list[torch.Tensor]:
    """LLaVA-Next's full image tokens (every view, packed), one ``(tokens, hidden)`` tensor per image."""
    feats = model.model.get_image_features(pixel_values=px, image_sizes=sizes,
                                           vision_feature_layer=model.config.vision_feature_layer,
                                           vision_feature_select_strategy=model.config.vision_feature_select_strategy)
    return list(feats.pooler_output if hasattr(feats, "pooler_output") else feats)
