"""Typed configuration: one source of truth, YAML files plus dotted command-line overrides.

Every section rejects unknown keys, so a typo in a preset or an override fails at
once with the offending path instead of being silently ignored::

    cfg = load_config("jobs/configs/quickstart_small.yaml", ["synth.items=200", "eval.seed=3"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lavic_ray.errors import InvalidInput
from lavic_ray.variants import VARIANTS, VariantName


class ConfigError(InvalidInput):
    """A configuration file or override is invalid; the message says where and why."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def actor_pool(actors: int):
    """A Ray Data actor pool of up to ``actors`` actors that starts with the first one: Ray queues the others until
    the cluster has room (the autoscaler adds nodes for them), so a pool never waits for a size the cluster does
    not hold, and nothing sizes it from what the cluster holds now."""
    import ray

    return ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, actors))


class ActorPool(Strict):
    """Where a model-loading step runs: a pool of Ray actors, each holding one copy of the model."""

    actors: int = Field(1, ge=1, description="actors in the pool (each loads the model once)")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs each actor requests from Ray (its torch threads on a CPU)")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs each actor requests from Ray (0: a CPU actor)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the model runs inside an actor: auto = cuda when the actor requests GPUs and "
                            "CUDA is there, else cpu")
    batch_size: int = Field(16, ge=1, description="items (or conversations) per batch an actor processes")

    def resolved_device(self) -> str:
        """The torch device an actor of this pool uses (call it inside the actor)."""
        from lavic_ray.hardware import cuda_available, resolve_device

        if self.device != "auto":
            return resolve_device(self.device)
        return "cuda" if self.gpus_per_actor > 0 and cuda_available() else "cpu"


class SynthConfig(Strict):
    """The synthetic catalog (``lavic synth``)."""

    seed: int = Field(0, description="the synthetic catalog's seed (items, images, conversations)")
    items: int = Field(400, ge=48, description="catalog size")
    conversations: int = Field(600, ge=20, description="conversations over all three splits")
    domain: str = Field("synthetic", description="the domain the synthetic conversations are written under")
    scheme: Literal["products", "gadgets"] = Field(
        "products", description="products (mugs, t-shirts: colour and pattern decide) or gadgets (bottles, clocks: motif and build decide)")
    image_size: int | None = Field(None, ge=112, description="square image side; None: the scheme's (products 672, which "
                                                             "gives LLaVA-Next 5 views; gadgets 336)")
    decisive: list[str] | None = Field(None, description="gadgets only: the two of motif, build and colour requests ask for (None: motif and build); the third a distractor")

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

    root: str | None = Field(None, description="the dataset's folder in the LaViC layout (None: the synthetic catalog under storage_root)")
    domain: str = Field("synthetic", description="the conversations' domain: <root>/<domain>/{train,valid,test}.jsonl")
    images_dir: str | list[str] | None = Field(None, description="the image folder(s), looked in in order (the release "
                                                                 "keeps training and validation images apart); "
                                                                 "default <root>/images")
    descriptions: str | None = Field(None, description="descriptions.parquet from lavic describe; overrides the metadata's")
    views: str | None = Field(None, description="a lavic preprocess output directory: embed reads its tiled views")


class RetrievalConfig(Strict):
    """Text retrievers (SBERT, BM25)."""

    sbert_model: str = Field("all-MiniLM-L6-v2", description="sentence-transformers name or path; the default is the packaged copy")
    device: str = Field("cpu", description="where SBERT encodes (cpu, cuda)")
    batch_size: int = Field(128, ge=1, description="texts SBERT encodes at once")
    item_text: Literal["title", "title+description"] = Field("title", description="what an item is retrieved by: its title, or its title and description")


class LavicRun(Strict):
    """A trained stage 2 to evaluate: its output directory (adapter + config.yaml) and embedding table."""

    stage2_dir: str
    table: str | None = None


class GenerateConfig(Strict):
    """``lavic-generate``: the answer decoded greedily after the listwise prompt, then parsed for an item ID."""

    max_new_tokens: int = Field(16, ge=1, description="tokens decoded (the reference: 10)")
    id_pattern: Literal["catalog", "paper"] = Field(
        "catalog", description="catalog: the first ID the catalog or list knows (ISBNs too); paper: the reference's regex \\bB[A-Z0-9]{9}\\b")


class EvalConfig(Strict):
    """Evaluation runs (``lavic evaluate``); ``resources``: where the methods that load a model run."""

    #: LaViC methods (``lavic``, ``lavic-title-only``, ``lavic-no-distill``, ``lavic-generate``) -> their trained run
    runs: dict[str, LavicRun] = Field({}, description="LaViC method -> its trained stage-2 run (filled by the workflow; lavic evaluate --stage2)")

    methods: list[str] = Field(["first-candidate", "random", "sbert", "bm25"], description="what lavic evaluate and the evaluate job score")
    candidates_key: str = Field("candidates_st", description="the conversations' candidate list to rank (candidates_st: SBERT's, the paper's)")
    ks: list[int] = Field([1, 5, 10], description="cut-offs of HR@k, NDCG@k and MRR@k")
    seed: int = Field(0, description="seed of the random baseline")
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
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="the weights' dtype when loaded (bfloat16 for the 7B on GPUs)")
    feature_layer: int | None = Field(None, description="the [CLS] layer (None: the checkpoint's "
                                      "projector layer, -2 in LLaVA-v1.6); -1: last_hidden_state (the paper)")
    scale_vectors: bool = Field(True, description="rescale each vector to the LLM's mean token-embedding norm (lavic-ray); false: as projected (the paper)")
    empty_views: Literal["repeat_base", "run_padded"] = Field(
        "repeat_base", description="fewer than 5 views: repeat the base view's vector (lavic-ray), or run the zero-padded views (the paper)")
    missing_image: Literal["zeros", "white_image"] = Field(
        "zeros", description="an item without a usable image: five zero vectors (lavic-ray), or a white 336x336 image (the paper)")


class SmallModelConfig(Strict):
    """How ``model.checkpoint: small`` is built (``lavic small-model``; the 7B checkpoint skips this)."""

    epochs: int = Field(2, ge=1, description="full-token epochs: image tokens -> description, the projector in full, LLM via LoRA")
    lr: float = Field(1e-3, gt=0, description="learning rate of the small model's full-token step")
    batch_size: int = Field(8, ge=1, description="images per step of the small model's build")
    step_budget: int | None = Field(None, ge=1, description="the most full-token optimizer steps its epochs may take (None: all); the schedule ends there")
    llm_lora_r: int = Field(16, ge=0, description="LoRA rank of the LLM in the full-token step, merged afterwards (0: LLM frozen)")
    vision_image_size: int = Field(56, ge=28, description="the DINOv2 tower's view size in pixels, a multiple of its 14 px patch")
    seed: int = Field(0, description="initialisation of the vision side and the order of its training data")
    cpus: float | None = Field(None, gt=0, description="CPUs of the Ray task that builds it (None: every CPU Ray has "
                                                      "free); it builds on CPU")

    @field_validator("vision_image_size")
    @classmethod
    def _fits_the_patch(cls, size: int) -> int:
        if size % 14:
            raise ValueError(f"{size}: the DINOv2 tower needs a multiple of 14 (its patch)")
        return size


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
        "tokenizer", description="BOS at the start of each sequence: as the tokenizer adds it (Mistral yes, SmolLM2 no), always, or never")
    target_eos: bool = Field(True, description="a labelled EOS after each target (lavic-ray); the paper has none (its pad token is EOS)")
    truncation: Literal["conversation_start", "right"] = Field(
        "conversation_start", description="an over-long prompt loses the conversation's start (lavic-ray), or its right end (the paper)")
    turn: dict[str, str] = Field({"submission": "User: {text}", "comment": "Comment: {text}"},
                                 description="how {conversation} renders each turn, by role")
    turn_separator: str = Field("\n", description="between the rendered turns of {conversation}")
    stage1: str = Field("Product title: {title}\nProduct image:{image}\nDescribe what the image shows.\nDescription:", description="stage 1's prompt ({title}, {image}: the 5 vector slots)")
    stage1_target: str = Field(" {description}", description="stage 1's target after the prompt ({description})")
    listwise_header: str = Field("Conversation:\n{conversation}\n\nCandidates:\n", description="the listwise prompt's start ({context}: the raw conversation; {conversation}: rendered)")
    listwise_candidate: str = Field("{image} {label}: {title}\n", description="one block per candidate, in list order; "
                                    "{image} first lets the ID attend to its item's vectors")
    listwise_cue: str = Field("Which candidate does the user want? Answer:", description="after the candidates, before the answer")
    listwise_answer: str = Field(" {label}", description="the trained answer ({label} or {id})")
    pointwise_prefix: str = Field("Conversation:\n{conversation}", description="the pointwise prompt's start, shared by the candidates")
    pointwise_candidate: str = Field("\n\nCandidate:{image} {title}\nIs this what the user wants? Answer:", description="one candidate's continuation ({image}, {title}, {id})")
    pointwise_yes: str = Field(" yes", description="the positive answer")
    pointwise_no: str = Field(" no", description="the negative answer")

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
    """LoRA on the stage's target modules (stage 1: every Linear of the vision tower and projector; stage 2: the LLM's)."""

    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha (the update is scaled by alpha / r)")
    dropout: float = Field(0.1, ge=0, lt=1, description="LoRA dropout")


class EngineConfig(Strict):
    """The training engine: DeepSpeed (CPU/gloo here, NCCL on GPUs) or plain torch."""

    kind: Literal["deepspeed", "torch"] = Field("deepspeed", description="the training engine: DeepSpeed, or plain torch (AdamW, DDP) where DeepSpeed is absent")
    zero_stage: int = Field(2, ge=0, le=3, description="DeepSpeed ZeRO stage; 3 builds the model sharded under deepspeed.zero.Init")
    offload_optimizer: bool = Field(False, description="DeepSpeed: keep the optimizer state on the CPU")
    precision: Literal["fp32", "bf16", "bf16-mixed", "fp16", "auto"] = Field(
        "fp32", description="fp32; bf16 (DeepSpeed's); fp16 (the paper's, GPUs); bf16-mixed (autocast); auto: bf16-mixed where bf16 is native")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass (memory for time)")
    micro_batch_size: int = Field(4, ge=1, description="examples per forward pass on each worker")
    grad_accumulation: int = Field(1, ge=1, description="micro-batches per optimizer step")
    grad_clip: float = Field(1.0, ge=0, description="the gradients' largest norm (0: no clipping)")
    deepspeed_config: str | None = Field(None, description="a DeepSpeed JSON file merged over the computed config; its "
                                                           "\"auto\" values keep the computed ones")


class StageConfig(Strict):
    """Shared by stage 1 and stage 2."""

    lora: LoraConfig = LoraConfig()
    engine: EngineConfig = EngineConfig()
    lr: float = Field(5e-5, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(1e-5, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warm-up")
    lr_decay: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="after the warmup: constant (the paper's), or decaying to 0 at the last step (linear, cosine)")
    epochs: int = Field(5, ge=1, description="passes over the training examples")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs and "
                                                          "step_budget)")
    step_budget: int | None = Field(None, ge=1, description="the most optimizer steps the epochs may take (None: all): a larger dataset stops there")
    max_length: int = Field(1024, ge=32, description="the most tokens of a training sequence")
    seed: int = Field(0, description="the LoRA's initialisation and the order of the examples")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (1 process each)")
    use_gpu: bool = Field(False, description="each worker takes a GPU (NCCL); false: CPU workers (gloo)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each Ray Train worker requests")
    placement: Literal["PACK", "STRICT_PACK", "SPREAD"] = Field(
        "PACK", description="the workers' placement group: STRICT_PACK keeps a multi-GPU run on one node, SPREAD, PACK")
    log_every: int = Field(10, ge=1, description="optimizer steps between the log lines and progress of a run")
    checkpoint_every: int = Field(0, ge=0, description="optimizer steps between checkpoints (0: at each evaluation)")
    eval_every: int = Field(0, ge=0, description="optimizer steps between validations (0: once per epoch)")
    eval_limit: int | None = Field(None, ge=1, description="validation examples (None: all)")
    keep: Literal["best", "last"] = Field("best", description="the adapter kept in <stage dir>/adapter: the best on "
                                                              "validation (lavic-ray) or the last step's (the reference)")
    group_by_length: bool = Field(True, description="micro-batches of similar length (less padding), sorted within windows of 32, then shuffled")

    def run_resources(self) -> tuple[str, float]:
        """The resource one Ray Train run of this stage holds, and how much of it: a GPU per worker, else its CPUs."""
        return ("GPU", float(self.num_workers)) if self.use_gpu else ("CPU", self.num_workers * self.cpus_per_worker)


class Stage1Config(StageConfig):
    """Visual knowledge self-distillation (paper: r 8, alpha 32, dropout 0.1, lr 5e-5, wd 1e-5, 5 epochs, batch 4)."""

    split: Literal["heldout", "files"] = Field(
        "heldout", description="heldout: 10% of the items by hashed ID (lavic-ray); files: item2meta_train.json / _valid.jsonl (the paper)")
    word_alignment: float = Field(
        0.0, ge=0, description="weight of a term pulling the 5 vectors towards their description's words (0: the paper's; docs/model.md)")


#: How a prompt prefix is shared by its candidates' continuations (lavic_ray.model.scoring).
PrefixSharing = Literal["auto", "packed", "cache", "none"]


class Stage2Config(StageConfig):
    """Recommendation fine-tuning (LoRA on the language model)."""

    lora: LoraConfig = LoraConfig(r=16, alpha=32, dropout=0.05)
    lr: float = Field(2e-4, gt=0, description="peak learning rate (AdamW)")
    epochs: int = Field(1, description="passes over the training conversations")
    formulation: Literal["listwise", "pointwise"] = Field("listwise", description="listwise (answer the ground truth's label; the paper's) or pointwise (yes/no per candidate)")
    answer: Literal["id", "letter"] = Field("id", description="listwise: the answer is the item's ID (the paper's) or a letter label")
    negatives: int = Field(9, ge=1, description="pointwise: negatives per positive, drawn from its candidate list "
                                                "(scored together after one shared conversation prefix)")
    negative_sampling: Literal["random", "visual"] = Field(
        "random", description="pointwise negatives: random, or visual (the candidates whose vectors are the most alike the positive's)")
    prefix_sharing: PrefixSharing = Field(
        "auto", description="how candidates share a prompt: packed (one pass, block mask), cache (KV copies), none; auto: packed")
    use_images: bool = Field(True, description="give each candidate its 5 vectors (false: title only, the paper's ablation)")
    candidates_key: str = Field("candidates_st", description="the candidate list stage 2 trains on (candidates_st: SBERT's top 10)")
    elastic_threads: bool = Field(False, description="CPU runs on Ray: a worker takes more torch threads when its node's CPUs fall idle")


class JobConfig(Strict):
    """What one ``ray job submit`` entry point (``jobs/<job>.py``) works on."""

    variant: VariantName = Field(
        "lavic", description="stage 2 / evaluation: the full method or one of the paper's ablations")
    split: Literal["train", "valid", "test"] = Field("test", description="evaluate: the split to score")
    max_failures: int = Field(1, ge=0, description="Ray Train worker failures a run survives (from its last checkpoint)")
    worker_start_timeout_s: float = Field(
        600.0, gt=0, description="Ray Train: seconds a worker group may take to start (a node scaled up from zero included)")
    start_retries: int = Field(
        3, ge=-1, description="Ray Train: failed worker-group starts retried before the run fails (-1: forever, Ray's default)")
    variants: list[VariantName] = Field(list(VARIANTS), min_length=1, description="the pipeline job and the quickstart: "
                                        "the stage-2 variants they train and evaluate")
    concurrent_runs: int = Field(1, ge=1, description="stage-2 variant runs at once (Ray queues their workers, the autoscaler adds nodes)")


class PlacementConfig(Strict):
    """Where CPU-only work lands on a cluster of CPU and GPU nodes."""

    cpu_resource: str | None = Field(
        None, description="a custom resource only CPU worker nodes advertise: CPU-only work asks for 0.01 of it (None: anywhere)")

    def cpu_resources(self) -> dict[str, float]:
        """The extra Ray resources a CPU-only task or actor requests."""
        return {self.cpu_resource: 0.01} if self.cpu_resource else {}


class TrackingConfig(Strict):
    """Experiment tracking of training runs (rank 0 logs every reported metric)."""

    backend: Literal["none", "tensorboard", "mlflow"] = Field("none", description="experiment tracking of training runs: none, tensorboard or mlflow")
    #: TensorBoard log directory or MLflow tracking URI (a local ``file:`` store by default);
    #: None: ``<stage dir>/tensorboard`` or ``file:<storage_root>/mlruns``
    uri: str | None = Field(None, description="TensorBoard folder or MLflow URI (None: <stage dir>/tensorboard, file:<storage_root>/mlruns)")
    experiment: str = Field("lavic", description="the MLflow experiment")


class TuneConfig(Strict):
    """A Ray Tune search over one stage (``jobs/tune.py``); each trial is a Ray Train run."""

    stage: Literal["stage1", "stage2"] = Field("stage2", description="the stage searched: each trial is a whole Ray Train run of it")
    metric: str = Field("valid_hr@1", description="reported metric to optimise (stage 1: valid_ppl)")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise the metric")
    num_samples: int = Field(4, ge=1, description="trials")
    max_concurrent_trials: int = Field(2, ge=1, description="trials at once (Ray queues their workers, the autoscaler adds nodes)")
    #: dotted config key -> distribution: {loguniform: [lo, hi]}, {uniform: [lo, hi]}, {choice: [...]}, {randint: [lo, hi]}
    space: dict[str, dict[str, list]] = Field({"stage2.lr": {"loguniform": [1e-4, 3e-3]}, "stage2.lora.r": {"choice": [8, 16]}}, description="dotted key -> {loguniform|uniform: [lo, hi]}, {choice: [...]} or {randint: [lo, hi]}")
    #: ASHA: trials are compared at these report steps and the worst stopped early
    grace_period: int = Field(1, ge=1, description="reports before a trial may be stopped")
    reduction_factor: int = Field(2, ge=2, description="ASHA: the share of trials kept at each rung is 1 / this")
    seed: int = Field(0, description="the search's seed")


class FetchConfig(Strict):
    """Fetching images by URL (``lavic preprocess``): bounded, timed out, retried with backoff."""

    concurrency: int = Field(8, ge=1, description="requests in flight per preprocess worker")
    timeout_s: float = Field(10.0, gt=0, description="seconds per attempt (connect and each read)")
    retries: int = Field(3, ge=0, description="further attempts after timeouts, 5xx/429 and truncated bodies")
    backoff_s: float = Field(0.5, ge=0, description="first wait between attempts; doubles each time")
    max_bytes: int = Field(20 * 2**20, ge=1, description="the largest image body accepted")


class PreprocessConfig(Strict):
    """``lavic preprocess``: decode, validate and tile every image into Parquet shards (Ray Data)."""

    shard_size: int = Field(256, ge=1, description="images per output shard (the unit a rerun skips)")
    workers: int = Field(2, ge=1, description="concurrent shard tasks")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each preprocessing worker requests")
    store_views: bool = Field(True, description="keep the tiled views (float16) in the shards")
    fetch: FetchConfig = FetchConfig()


class EmbedConfig(ActorPool):
    """``lavic embed``: the item embedding table (Ray Data actor pool)."""

    image: Literal["primary", "first_file"] = Field(
        "primary", description="an item's image: primary (its lowest listed k; lavic-ray), or the file {item_id}_0.jpg (the paper)")


class DescribeConfig(ActorPool):
    """``lavic describe``: teacher descriptions from the full-token VLM (Ray Data actor pool)."""

    #: Text before and after the image's tokens; ``{title}`` is replaced by the item's title. The
    #: default is the paper's instruction (a detailed, visually grounded description that does not
    #: repeat the title); the small preset uses the prompt its vision side was trained with.
    prefix: str = (Field("You are a helpful assistant.\nGiven an Amazon product's title and its image, please provide a detailed, "
                   "visually grounded description of the product that would help someone decide whether to purchase it. "
                   "Focus on the product's appearance, features, and any other visually informative aspects. "
                   "Do not mention the product's title in your answer. This product's title is: {title}\n", description="text before an image's tokens ({title}: the item's title); the default is the paper's"))
    suffix: str = Field("\n\nAssistant:", description="text after the image's tokens")
    max_new_tokens: int = Field(96, ge=1, description="the longest description generated (greedy)")
    batch_size: int = Field(8, ge=1, description="images described at once by an actor")
    overwrite: bool = Field(False, description="describe images that already have a description too")
    limit: int | None = Field(None, ge=1, description="describe at most this many images (benchmarks, trials)")


class DownloadConfig(Strict):
    """``jobs/download.py``: a hub checkpoint into the folder ``model.checkpoint`` names (the models volume)."""

    repo_id: str = Field("llava-hf/llava-v1.6-mistral-7b-hf", description="the hub repository to download")
    revision: str = Field("main", description="a commit SHA (pinned), or a branch or tag resolved to its commit when "
                                              "the download starts (recorded beside the weights)")


class LavicConfig(Strict):
    """The whole system's configuration."""

    storage_root: str = Field("lavic_runs/default", description="where every artifact goes: a folder (a shared volume on a cluster), or s3://... / gs://...")
    seed: int | None = Field(None, description="seeds every step when set (synth, small_model, stage1, stage2, eval, tune); None: each section's own seed")
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


def reference_markdown() -> str:
    """docs/config.md: every setting of :class:`LavicConfig`, section by section, with its type, default and
    description, as the schema says (``python -m lavic_ray.config > docs/config.md``; a test checks it is current)."""
    import json

    def type_name(f) -> str:
        return (str(f.annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
                .replace("lavic_ray.config.", ""))

    def shown(d) -> str:
        if isinstance(d, BaseModel):
            d = d.model_dump(mode="json")
        text = json.dumps(d) if not isinstance(d, str) else repr(d)
        return text if len(text) <= 60 else text[:57] + "..."

    lines = ["# Configuration reference", "",
             "Every setting, as `--set section.key=value` or a preset's YAML takes it. Generated from the schema "
             "(`python -m lavic_ray.config > docs/config.md`); `tests/test_config.py` fails when this file is stale.", ""]

    def section(model: type[BaseModel], prefix: str, values: BaseModel) -> None:
        rows, subs = [], []
        for name, f in model.model_fields.items():
            ann, value = f.annotation, getattr(values, name)
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                subs.append((ann, prefix + name, value))
                continue
            desc = (f.description or "").replace("|", "\\|")
            cells = [type_name(f).replace("|", "\\|"), shown(value).replace("|", "\\|")]
            rows.append(f"| `{prefix}{name}` | `{cells[0]}` | `{cells[1]}` | {desc} |")
        if rows:
            lines.extend([f"## `{prefix.rstrip('.') or 'top level'}`", "", ((model.__doc__ or "").strip().splitlines() or [""])[0], "",
                          "| setting | type | default | what it does |", "|---|---|---|---|", *rows, ""])
        for sub, name, value in subs:
            section(sub, name + ".", value)

    section(LavicConfig, "", LavicConfig())
    return "\n".join(lines)


if __name__ == "__main__":  # the module's own classes, not __main__'s copies
    from lavic_ray.config import reference_markdown as _reference

    print(_reference(), end="")
