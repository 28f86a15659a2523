"""Typed configuration: one source of truth, YAML files plus dotted command-line overrides.

Every section rejects unknown keys, so a typo in a preset or an override fails at
once with the offending path instead of being silently ignored::

    cfg = load_config("jobs/configs/quickstart_small.yaml", ["synth.items=200", "eval.seed=3"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lavic_ray.errors import InvalidInput
from lavic_ray.variants import VARIANTS, VariantName


class ConfigError(InvalidInput):
    """A configuration file or override is invalid; the message says where and why."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Fractions(Strict):
    """Shares of train / valid / test; they must sum to 1."""

    train: float = Field(ge=0, le=1)
    valid: float = Field(ge=0, le=1)
    test: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "Fractions":
        total = self.train + self.valid + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + valid + test must be 1, got {total:g}")
        return self


def actor_pool(actors: int):
    """A Ray Data actor pool of up to ``actors`` actors that starts with the first one: Ray queues the others until
    the cluster has room (the autoscaler adds nodes for them), so a pool never waits for a size the cluster does
    not hold, and nothing sizes it from what the cluster holds now."""
    import ray

    return ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, actors))


class ActorPool(Strict):
    """Where a model-loading step runs: a pool of Ray actors, each holding one copy of the model."""

    actors: int = Field(1, ge=1, description="actors in the pool (each loads the model once)")
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs each actor requests from Ray (0: a CPU actor)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the model runs inside an actor: auto = cuda when the actor requests GPUs and "
                            "CUDA is there, else cpu")
    batch_size: int = Field(16, ge=1)

    def resolved_device(self) -> str:
        """The torch device an actor of this pool uses (call it inside the actor)."""
        from lavic_ray.hardware import cuda_available, resolve_device

        if self.device != "auto":
            return resolve_device(self.device)
        return "cuda" if self.gpus_per_actor > 0 and cuda_available() else "cpu"


class SynthConfig(Strict):
    """The synthetic catalog (``lavic synth``)."""

    seed: int = 0
    items: int = Field(400, ge=48, description="catalog size")
    conversations: int = Field(600, ge=20, description="conversations over all three splits")
    domain: str = "synthetic"
    scheme: Literal["products", "gadgets"] = Field(
        "products", description="what the catalog is made of: 'products' (mugs, t-shirts, ...; decisive colour and pattern) "
                                "or 'gadgets' (bottles, clocks, ...; decisive motif and build, colour a distractor)")
    image_size: int | None = Field(None, ge=112, description="square image side; None: the scheme's (products 672, which "
                                                             "gives LLaVA-Next 5 views; gadgets 336)")
    decisive: list[str] | None = Field(None, description="gadgets only: the two attributes a request asks for, of motif, "
                                                          "build and colour (None: motif and build); the third stays a "
                                                          "visible, described distractor")
    split: Fractions = Fractions(train=0.75, valid=0.10, test=0.15)
    #: Disjoint item pools: a split's ground truth and candidates come from its own pool,
    #: so valid/test ground-truth items never occur in a training conversation.
    pools: Fractions = Fractions(train=0.60, valid=0.15, test=0.25)
    gt_in_candidates: float = Field(0.9, ge=0, le=1, description="share of valid/test lists holding the ground truth (train: all)")

    @model_validator(mode="after")
    def _decisive_needs_gadgets(self) -> "SynthConfig":
        if self.decisive is not None:
            if self.scheme != "gadgets":
                raise ValueError(f"synth.decisive applies to the gadgets scheme only (scheme is {self.scheme!r})")
            known = ("motif", "build", "colour")
            if len(self.decisive) != 2 or len(set(self.decisive)) != 2 or not set(self.decisive) <= set(known):
                raise ValueError(f"synth.decisive must name two different attributes of {', '.join(known)}; "
                                 f"got {self.decisive}")
        return self


class DatasetConfig(Strict):
    """Where a dataset in the LaViC layout is."""

    root: str | None = None
    domain: str = "synthetic"
    images_dir: str | list[str] | None = Field(None, description="the image folder(s), looked in in order (the release "
                                                                 "keeps training and validation images apart); "
                                                                 "default <root>/images")
    descriptions: str | None = Field(None, description="descriptions.parquet from lavic describe; overrides the metadata's")
    views: str | None = Field(None, description="a lavic preprocess output directory: embed reads its tiled views")


class RetrievalConfig(Strict):
    """Text retrievers (SBERT, BM25)."""

    sbert_model: str = Field("all-MiniLM-L6-v2", description="sentence-transformers name or path; the default is the packaged copy")
    device: str = "cpu"
    batch_size: int = Field(128, ge=1)
    item_text: Literal["title", "title+description"] = "title"


class LavicRun(Strict):
    """A trained stage 2 to evaluate: its output directory (adapter + config.yaml) and embedding table."""

    stage2_dir: str
    table: str | None = None


class GenerateConfig(Strict):
    """``lavic-generate``: the answer decoded greedily after the listwise prompt, then parsed for an item ID."""

    max_new_tokens: int = Field(16, ge=1, description="tokens decoded (the reference: 10)")
    id_pattern: Literal["catalog", "paper"] = Field(
        "catalog", description="catalog: every 10-character ID the catalog or the list knows, in order (ISBN-style IDs "
                               "too); paper: the first match of the reference's regex \\bB[A-Z0-9]{9}\\b, candidate or not")


class EvalConfig(Strict):
    """Evaluation runs (``lavic evaluate``); ``resources``: where the methods that load a model run."""

    #: LaViC methods (``lavic``, ``lavic-title-only``, ``lavic-no-distill``, ``lavic-generate``) -> their trained run
    runs: dict[str, LavicRun] = {}

    methods: list[str] = ["first-candidate", "random", "sbert", "bm25"]
    candidates_key: str = "candidates_st"
    ks: list[int] = [1, 5, 10]
    seed: int = 0
    limit: int | None = Field(None, ge=1, description="evaluate only the first N conversations")
    resources: ActorPool = Field(ActorPool(batch_size=8), description="the LaViC methods' model: actors, device, "
                                                                      "conversations per batch")
    generate: GenerateConfig = GenerateConfig()
    headline: Literal["hr@1", "hr@1_per_gt_item"] = Field(
        "hr@1", description="the figure reports lead with: HR@1 per conversation (lavic-ray), or per ground-truth item "
                            "(the paper's count)")


class ModelConfig(Strict):
    """Which LLaVA-Next checkpoint, and how LaViC wraps it."""

    checkpoint: str = Field("llava-hf/llava-v1.6-mistral-7b-hf", description="hub name or local directory (save_pretrained layout)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    feature_layer: int = Field(-2, description="vision hidden-state layer whose [CLS] is taken: -2 is LLaVA's projector "
                                               "layer (lavic-ray); -1 is the last encoder layer before the tower's "
                                               "post-layernorm (last_hidden_state, the reference)")
    scale_vectors: bool = Field(True, description="rescale each vector to the mean norm of the LLM's token embeddings "
                                                  "(lavic-ray; projected [CLS] norms are 100-1000x larger); false: as "
                                                  "projected (the reference)")
    empty_views: Literal["repeat_base", "run_padded"] = Field(
        "repeat_base", description="an image with fewer than 5 LLaVA-Next views: repeat its base view's vector in the "
                                   "empty slots (lavic-ray), or run the zero-padded views through the tower (the reference)")
    missing_image: Literal["zeros", "white_image"] = Field(
        "zeros", description="an item without a usable image: five zero vectors (lavic-ray), or a white 336x336 RGB "
                             "image run through the tower (the reference)")


class SmallModelConfig(Strict):
    """How ``model.checkpoint: small`` is built (``lavic small-model``; the 7B checkpoint skips this)."""

    epochs: int = Field(2, ge=1, description="full-token epochs: image tokens -> description, the projector in full, LLM via LoRA")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    contrastive_epochs: int = Field(40, ge=0, description="CLIP-style tower pretraining epochs first (0: skip)")
    step_budget: int | None = Field(None, ge=1, description="the most full-token optimizer steps its epochs may take (None: "
                                                             "every epoch's); on a larger catalog the step stops there, its "
                                                             "learning-rate schedule ending there too")
    contrastive_step_budget: int | None = Field(None, ge=1, description="the same for the contrastive epochs")
    llm_lora_r: int = Field(16, ge=0, description="LoRA rank of the LLM in the full-token step, merged afterwards (0: LLM frozen)")
    tower_lr_scale: float = Field(0.0, ge=0, description="the vision tower's learning rate in the full-token step, as a "
                                                         "fraction of lr (0: frozen after its contrastive step, as LLaVA keeps "
                                                         "its CLIP tower; 1: trained in full, as before preset v5)")
    vision_image_size: int = Field(112, ge=28, description="the small vision tower's input size in pixels")
    max_images: int | None = Field(None, ge=1, description="train the vision side on the first N images only")
    seed: int = Field(0, description="initialisation of the vision side and the order of its training data")
    cpus: float | None = Field(None, gt=0, description="CPUs of the Ray task that builds it (None: every CPU Ray has "
                                                      "free); it builds on CPU")


#: The placeholders each prompt template may use (``{image}``: an item's 5 vector slots; ``{context}``: the
#: conversation's raw text, tags included; ``{conversation}``: its turns rendered with ``prompts.turn``).
TEMPLATE_FIELDS = {
    "stage1": {"title", "image", "id"},
    "stage1_target": {"description"},
    "listwise_header": {"context", "conversation"},
    "listwise_candidate": {"label", "id", "title", "image"},
    "listwise_cue": set(),
    "listwise_answer": {"label", "id"},
    "pointwise_prefix": {"context", "conversation"},
    "pointwise_candidate": {"id", "title", "image"},
    "pointwise_yes": set(),
    "pointwise_no": set(),
}


class PromptsConfig(Strict):
    """Prompt templates: text with named ``{placeholders}``; the code only fills them in.

    A prompt is tokenised as one string (so its ids are exactly what the tokenizer gives for the
    whole text, on byte-level BPE and SentencePiece tokenizers alike), with each ``{image}`` as the
    checkpoint's image token 5 times (the item's vectors replace them) - or nothing, for a run
    without images. The defaults are lavic-ray's; ``jobs/configs/paper_prompts.yaml`` holds the
    reference's, and docs/paper.md lists every difference.
    """

    bos: Literal["tokenizer", "always", "never"] = Field(
        "tokenizer", description="BOS at the start of every sequence: as the tokenizer adds it by default "
                                 "(add_bos_token; Mistral/Llama yes, SmolLM2 no), always, or never")
    target_eos: bool = Field(True, description="an EOS token after each target (stage-1 description, stage-2 answer), "
                                               "labelled; the reference has none (its pad token is EOS)")
    truncation: Literal["conversation_start", "right"] = Field(
        "conversation_start", description="an over-long prompt loses tokens from the start of the conversation only "
                                          "(candidates and answer kept), or from the right end (the reference)")
    turn: dict[str, str] = Field({"submission": "User: {text}", "comment": "Comment: {text}"},
                                 description="how {conversation} renders each turn, by role")
    turn_separator: str = "\n"
    stage1: str = "Product title: {title}\nProduct image:{image}\nDescribe what the image shows.\nDescription:"
    stage1_target: str = " {description}"
    listwise_header: str = "Conversation:\n{conversation}\n\nCandidates:\n"
    listwise_candidate: str = Field("{image} {label}: {title}\n", description="one block per candidate, in list order; "
                                    "{image} first lets the ID attend to its item's vectors")
    listwise_cue: str = "Which candidate does the user want? Answer:"
    listwise_answer: str = " {label}"
    pointwise_prefix: str = "Conversation:\n{conversation}"
    pointwise_candidate: str = "\n\nCandidate:{image} {title}\nIs this what the user wants? Answer:"
    pointwise_yes: str = " yes"
    pointwise_no: str = " no"

    @model_validator(mode="after")
    def _known_placeholders(self) -> "PromptsConfig":
        import string

        for name, allowed in TEMPLATE_FIELDS.items():
            try:
                used = {f for _, f, _, _ in string.Formatter().parse(getattr(self, name)) if f is not None}
            except ValueError as e:
                raise ValueError(f"{name}: {e} (write a literal brace as {{{{ or }}}})") from None
            unknown = used - allowed
            if unknown:
                raise ValueError(f"{name}: unknown placeholder(s) {sorted(unknown)}; it may use {sorted(allowed) or 'none'}")
        for role in ("submission", "comment"):
            if role not in self.turn:
                raise ValueError(f"turn: no template for the role {role!r}")
        return self


class LoraConfig(Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)


class EngineConfig(Strict):
    """The training engine: DeepSpeed (CPU/gloo here, NCCL on GPUs) or plain torch."""

    kind: Literal["deepspeed", "torch"] = "deepspeed"
    zero_stage: int = Field(2, ge=0, le=3)
    offload_optimizer: bool = False
    precision: Literal["fp32", "bf16", "bf16-mixed", "fp16", "auto"] = Field(
        "fp32", description="fp32; auto (bf16-mixed where the device runs bf16 matmuls natively - CPUs with AVX-512 "
                            "BF16 or AMX, GPUs with bf16 - else fp32, decided on the machine that runs the step: "
                            "emulated bf16 ran training steps 20-36x slower than fp32 on an AVX2-only CPU); bf16 (DeepSpeed's bf16 mode: bf16 weights and activations, fp32 master weights); "
                            "fp16 (the reference's: DeepSpeed's fp16 mode with loss scaling, or autocast + a grad "
                            "scaler with the torch engine; GPUs); "
                            "bf16-mixed (torch.autocast: fp32 weights and optimizer, matmuls in bf16 - the fast choice "
                            "on CPUs with AVX-512 BF16 or AMX; see bench/RESULTS.md)")
    gradient_checkpointing: bool = False
    micro_batch_size: int = Field(4, ge=1)
    grad_accumulation: int = Field(1, ge=1)
    grad_clip: float = Field(1.0, ge=0)
    deepspeed_config: str | None = Field(None, description="a DeepSpeed JSON file merged over the computed config; its "
                                                           "\"auto\" values keep the computed ones")


class StageConfig(Strict):
    """Shared by stage 1 and stage 2."""

    lora: LoraConfig = LoraConfig()
    engine: EngineConfig = EngineConfig()
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    warmup_steps: int = Field(0, ge=0)
    fp32_warmup_steps: int | None = Field(
        None, ge=0, description="the warmup where this stage trains in fp32 (engine.precision fp32, or auto on a "
                                "device without native bf16); None: warmup_steps. The quickstart's stage 2: 30 in "
                                "fp32 against 5 with bf16 - on an AVX2-only CPU (fp32) stage 2 with 5 did not learn "
                                "and with 30 learned on each of 3 stage-2 seeds; on another upstream one stage-2 seed "
                                "with 30 was still at chance at step 120 when stopped (bench/RESULTS.md, 'Every machine')")
    lr_decay: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="after the warmup: a constant learning rate (the reference's), or one decaying to 0 at "
                                "the last step (max_steps, or the epochs' steps up to step_budget)")
    epochs: int = Field(5, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs and "
                                                          "step_budget)")
    step_budget: int | None = Field(None, ge=1, description="the most optimizer steps the epochs may take (None: every "
                                                            "epoch's): a larger dataset stops there, and a decaying "
                                                            "learning rate reaches 0 there; a smaller one runs its epochs")
    max_length: int = Field(1024, ge=32)
    seed: int = 0
    num_workers: int = Field(1, ge=1, description="Ray Train workers (1 process each)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    placement: Literal["PACK", "STRICT_PACK", "SPREAD"] = Field(
        "PACK", description="the Ray Train workers' placement group: STRICT_PACK keeps a multi-GPU run on one node "
                            "(NVLink, one shared-memory copy), SPREAD over nodes, PACK packs where it can")
    elastic_threads: bool = Field(False, description="CPU runs on Ray: a worker takes more torch threads when CPUs of "
                                                     "its node fall idle (a run beside it finished), up to the node's")
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="optimizer steps between checkpoints (0: at each evaluation)")
    eval_every: int = Field(0, ge=0, description="optimizer steps between validations (0: once per epoch)")
    eval_limit: int | None = Field(None, ge=1, description="validation examples (None: all)")
    keep: Literal["best", "last"] = Field("best", description="the adapter kept in <stage dir>/adapter: the best on "
                                                              "validation (lavic-ray) or the last step's (the reference)")
    patience: int | None = Field(None, ge=1, description="early stopping: stop after this many validations in a row "
                                                          "without an improvement of min_delta (None: run every step)")
    min_delta: float = Field(0.0, ge=0, description="early stopping: the smallest change of the validation metric that "
                                                    "counts as an improvement")
    min_steps: int = Field(0, ge=0, description="early stopping: never before this optimizer step")
    group_by_length: bool = Field(True, description="micro-batches of similar-length examples (less padding): each "
                                                    "window of 32 shuffled micro-batches is sorted by length, then the "
                                                    "window's micro-batches are shuffled again")

    def warmup_for(self, precision: str) -> int:
        """The warmup of this stage where it trains in ``precision`` (concrete: fp32, bf16-mixed, ...):
        ``fp32_warmup_steps`` in fp32 where it is set, else ``warmup_steps``."""
        return self.fp32_warmup_steps if precision == "fp32" and self.fp32_warmup_steps is not None else self.warmup_steps

    def run_resources(self) -> tuple[str, float]:
        """The resource one Ray Train run of this stage holds, and how much of it: a GPU per worker, else its CPUs."""
        return ("GPU", float(self.num_workers)) if self.use_gpu else ("CPU", self.num_workers * self.cpus_per_worker)


class Stage1Config(StageConfig):
    """Visual knowledge self-distillation (paper: r 8, alpha 32, dropout 0.1, lr 5e-5, wd 1e-5, 5 epochs, batch 4)."""

    split: Literal["heldout", "files"] = Field(
        "heldout", description="heldout: a deterministic valid_fraction of the items (hashed IDs), from both metadata "
                               "files (lavic-ray); files: train on item2meta_train.json's items, validate on "
                               "item2meta_valid.jsonl's (the reference)")
    word_alignment: float = Field(
        0.0, ge=0, description="lavic-ray option (0: off, the paper's stage 1): the weight of a second stage-1 term that "
                               "pulls each of an image's 5 vectors towards the words of its own teacher description: a "
                               "softmax over descriptions of the cosine between the vector and each description's mean "
                               "input embedding (centred on the catalog's mean), its own as the target. Vectors near "
                               "their attribute words are what stage 2 learns to match from quickly (bench/RESULTS.md)")


#: How a prompt prefix is shared by its candidates' continuations (lavic_ray.model.scoring).
PrefixSharing = Literal["auto", "packed", "cache", "none"]


class Stage2Config(StageConfig):
    """Recommendation fine-tuning (LoRA on the language model)."""

    lora: LoraConfig = LoraConfig(r=16, alpha=32, dropout=0.05)
    lr: float = Field(2e-4, gt=0)
    epochs: int = 1
    formulation: Literal["listwise", "pointwise"] = "listwise"
    answer: Literal["id", "letter"] = "id"
    negatives: int = Field(9, ge=1, description="pointwise: negatives per positive, drawn from its candidate list "
                                                "(scored together after one shared conversation prefix)")
    negative_sampling: Literal["random", "visual"] = Field(
        "random", description="pointwise: which of the list's candidates are a positive's negatives: 'random', or 'visual' "
                              "= those whose item vectors are the most alike the positive's (cosine of the mean of the 5 "
                              "vectors): items told apart only by what the conversation says about their look; a "
                              "title-only run has no vectors and draws at random")
    prefix_sharing: PrefixSharing = Field(
        "auto", description="how a prompt is shared by its candidates' continuations (pointwise: candidate suffixes after "
                            "the conversation, in training and scoring; listwise scoring: answers after the prompt), the "
                            "same numbers every way: 'packed' = one pass, continuations after the prefix under a block "
                            "attention mask; 'cache' = the prefix's KV cache copied per continuation; 'none' = one sequence "
                            "per candidate; 'auto' = packed, or cache/none under FlashAttention-2, which takes no such mask")
    use_images: bool = True
    candidates_key: str = "candidates_st"


class JobConfig(Strict):
    """What one ``ray job submit`` entry point (``jobs/<job>.py``) works on."""

    variant: VariantName = Field(
        "lavic", description="stage 2 / evaluation: the full method or one of the paper's ablations")
    split: Literal["train", "valid", "test"] = Field("test", description="evaluate: the split to score")
    max_failures: int = Field(1, ge=0, description="Ray Train worker failures a run survives (from its last checkpoint)")
    worker_start_timeout_s: float = Field(
        600.0, gt=0, description="Ray Train: seconds a worker group may take to start (placement, process start, "
                                 "torch.distributed set-up) before the start counts as failed; sets "
                                 "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S for the run (Ray's default, 60 s, is shorter than "
                                 "a busy 2-core machine takes to start 2 workers that import torch and DeepSpeed)")
    start_retries: int = Field(
        3, ge=-1, description="Ray Train: worker-group starts that failed or timed out a run retries before it fails "
                              "with Ray's error (FailureConfig.controller_failure_limit); -1: forever, Ray's default, "
                              "under which a run that can never start waits forever")
    variants: list[VariantName] = Field(list(VARIANTS), min_length=1, description="the pipeline job and the quickstart: "
                                        "the stage-2 variants they train and evaluate")
    concurrent_runs: int = Field(1, ge=1, description="stage-2 variant runs trained at once (Ray queues their workers "
                                                      "and the autoscaler adds nodes; the cluster is never measured)")


class PlacementConfig(Strict):
    """Where CPU-only work lands on a cluster of CPU and GPU nodes."""

    cpu_resource: str | None = Field(
        None, description="a custom resource only the CPU worker nodes advertise (KubeRay rayStartParams resources, "
                          "the launcher's node resources): preprocess, the Tune trials' drivers and the Serve ingress and "
                          "retriever request 0.01 of it, so they run there and leave the GPU nodes to model work; None: "
                          "anywhere (one machine)")

    def cpu_resources(self) -> dict[str, float]:
        """The extra Ray resources a CPU-only task or actor requests."""
        return {self.cpu_resource: 0.01} if self.cpu_resource else {}


class TrackingConfig(Strict):
    """Experiment tracking of training runs (rank 0 logs every reported metric)."""

    backend: Literal["none", "tensorboard", "mlflow"] = "none"
    #: TensorBoard log directory or MLflow tracking URI (a local ``file:`` store by default);
    #: None: ``<stage dir>/tensorboard`` or ``file:<storage_root>/mlruns``
    uri: str | None = None
    experiment: str = "lavic"


class TuneConfig(Strict):
    """A Ray Tune search over one stage (``jobs/tune.py``); each trial is a Ray Train run."""

    stage: Literal["stage1", "stage2"] = "stage2"
    metric: str = Field("valid_hr@1", description="reported metric to optimise (stage 1: valid_ppl)")
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(4, ge=1)
    max_concurrent_trials: int = Field(2, ge=1, description="trials at once: Ray queues their workers and the autoscaler "
                                                           "adds nodes (each trial driver holds cpus_per_trial while it waits)")
    #: dotted config key -> distribution: {loguniform: [lo, hi]}, {uniform: [lo, hi]}, {choice: [...]}, {randint: [lo, hi]}
    space: dict[str, dict[str, list]] = {"stage2.lr": {"loguniform": [1e-4, 3e-3]}, "stage2.lora.r": {"choice": [8, 16]}}
    #: ASHA: trials are compared at these report steps and the worst stopped early
    grace_period: int = Field(1, ge=1, description="reports before a trial may be stopped")
    reduction_factor: int = Field(2, ge=2)
    seed: int = 0


class FetchConfig(Strict):
    """Fetching images by URL (``lavic preprocess``): bounded, timed out, retried with backoff."""

    concurrency: int = Field(8, ge=1, description="requests in flight per preprocess worker")
    timeout_s: float = Field(10.0, gt=0)
    retries: int = Field(3, ge=0, description="further attempts after timeouts, 5xx/429 and truncated bodies")
    backoff_s: float = Field(0.5, ge=0, description="first wait between attempts; doubles each time")
    max_bytes: int = Field(20 * 2**20, ge=1)


class PreprocessConfig(Strict):
    """``lavic preprocess``: decode, validate and tile every image into Parquet shards (Ray Data)."""

    shard_size: int = Field(256, ge=1, description="images per output shard (the unit a rerun skips)")
    workers: int = Field(2, ge=1, description="concurrent shard tasks")
    cpus_per_worker: float = Field(1.0, gt=0)
    store_views: bool = Field(True, description="keep the tiled views (float16) in the shards")
    fetch: FetchConfig = FetchConfig()


class EmbedConfig(ActorPool):
    """``lavic embed``: the item embedding table (Ray Data actor pool)."""

    image: Literal["primary", "first_file"] = Field(
        "primary", description="the image an item's vectors come from: its primary image (the lowest k of its "
                               "{item_id}_{k}.jpg in the metadata; lavic-ray), or the file {item_id}_0.jpg whether "
                               "the metadata lists it or not (the reference)")


class DescribeConfig(ActorPool):
    """``lavic describe``: teacher descriptions from the full-token VLM (Ray Data actor pool)."""

    #: Text before and after the image's tokens; ``{title}`` is replaced by the item's title. The
    #: default is the paper's instruction (a detailed, visually grounded description that does not
    #: repeat the title); the small preset uses the prompt its vision side was trained with.
    prefix: str = ("You are a helpful assistant.\nGiven an Amazon product's title and its image, please provide a detailed, "
                   "visually grounded description of the product that would help someone decide whether to purchase it. "
                   "Focus on the product's appearance, features, and any other visually informative aspects. "
                   "Do not mention the product's title in your answer. This product's title is: {title}\n")
    suffix: str = "\n\nAssistant:"
    max_new_tokens: int = Field(96, ge=1)
    batch_size: int = Field(8, ge=1)
    overwrite: bool = Field(False, description="describe images that already have a description too")
    limit: int | None = Field(None, ge=1, description="describe at most this many images (benchmarks, trials)")


class DownloadConfig(Strict):
    """``jobs/download.py``: a hub checkpoint into the folder ``model.checkpoint`` names (the models volume)."""

    repo_id: str = Field("llava-hf/llava-v1.6-mistral-7b-hf", description="the hub repository to download")
    revision: str = Field("main", description="a commit SHA (pinned), or a branch or tag resolved to its commit when "
                                              "the download starts (recorded beside the weights)")


class LavicConfig(Strict):
    """The whole system's configuration."""

    storage_root: str = "lavic_runs/default"
    seed: int | None = Field(None, description="seeds every step when set (synth, small_model, stage1, stage2, eval, "
                                               "tune), replacing their own seeds; None: each section's seed")
    dataset: DatasetConfig = DatasetConfig()
    synth: SynthConfig = SynthConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    eval: EvalConfig = EvalConfig()
    model: ModelConfig = ModelConfig()
    small_model: SmallModelConfig = SmallModelConfig()
    stage1: Stage1Config = Stage1Config()
    stage2: Stage2Config = Stage2Config()
    job: JobConfig = JobConfig()
    tracking: TrackingConfig = TrackingConfig()
    tune: TuneConfig = TuneConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    describe: DescribeConfig = DescribeConfig()
    embed: EmbedConfig = EmbedConfig()
    prompts: PromptsConfig = PromptsConfig()
    placement: PlacementConfig = PlacementConfig()
    download: DownloadConfig = DownloadConfig()

    @model_validator(mode="after")
    def _one_seed(self) -> "LavicConfig":
        if self.seed is not None:
            for section in SEEDED:
                sub = getattr(self, section)
                if sub.seed != self.seed:
                    object.__setattr__(self, section, sub.model_copy(update={"seed": self.seed}))
        return self


#: The sections the top-level ``seed`` sets.
SEEDED = ("synth", "small_model", "stage1", "stage2", "eval", "tune")


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"bad override key {dotted!r}")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """``["a.b=1", "c=[1, 2]"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    tree: dict = {}
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like section.key=value")
        key, raw = ov.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {ov!r}: value is not valid YAML: {yaml_problem(e)}") from None
        set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _format_validation(e: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = "unknown key (check the spelling; see the section's fields)" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def yaml_problem(e: Exception) -> str:
    """A YAML parser error in one line: what, and where (line and column)."""
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else what


def _read_with_includes(p: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """A YAML file and, first, the files its ``include:`` names (relative to it), in merge order."""
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}" + (f" (included from {seen[-1]})" if seen else ""))
    if p.resolve() in seen:
        raise ConfigError(f"{p}: include cycle ({' -> '.join(map(str, seen))})")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got {type(loaded).__name__}")
    include = loaded.pop("include", [])
    out = []
    for inc in [include] if isinstance(include, str) else include:
        out += _read_with_includes(p.parent / inc, (*seen, p.resolve()))
    return out + [(p, loaded)]


def load_config(path: str | Path | list[str | Path] | None = None, overrides: list[str] | None = None,
                cls: type[Strict] = LavicConfig):
    """Load a configuration from YAML file(s) and dotted overrides.

    Args:
        path: A YAML file, or several merged in order (a preset, then the user's file);
            None starts from the defaults. A file's top-level ``include:`` (a path or a list,
            relative to the file) is merged before the file itself.
        overrides: ``section.key=value`` strings, applied last.
        cls: The config class (the whole-system :class:`LavicConfig` by default).

    Raises:
        ConfigError: Unreadable file, bad override, unknown key or bad value; the
            message names the file and the dotted path.
    """
    # defaults <- files <- overrides, merged key by key, so a partial section keeps its other defaults
    data: dict = cls().model_dump()
    sources = []
    paths = [] if path is None else (list(path) if isinstance(path, (list, tuple)) else [path])
    for item in paths:
        for p, loaded in _read_with_includes(Path(item)):
            data = _merge(data, loaded)
            sources.append(str(p))
    if overrides:
        data = _merge(data, parse_overrides(overrides))
        sources.append("overrides")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, " + ".join(sources) or "defaults")) from None


def config_to_yaml(cfg: BaseModel) -> str:
    """The resolved configuration as YAML (what artifacts are written beside)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
