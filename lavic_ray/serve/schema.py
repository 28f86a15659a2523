"""The HTTP API's request and response bodies, and the application's typed arguments.

Multi-turn use is **stateless**: the client resends the whole conversation on
every turn (``context`` or ``turns``), plus, optionally, the items it already
showed (``exclude``) so they are not recommended again. No session lives on the
server, so any replica can answer any turn, replicas can be added, removed or
killed between turns, and nothing has to expire.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lavic_ray.data.records import Turn, parse_turns
from lavic_ray.errors import InputMissing
from lavic_ray.retrieval.sbert import DEFAULT_SBERT

#: Roles a client may use for a turn, and the conversation role they map to.
ROLES: dict[str, Literal["submission", "comment"]] = {
    "user": "submission", "submission": "submission", "seeker": "submission",
    "assistant": "comment", "comment": "comment", "recommender": "comment",
}


#: The most IDs any list of a request may hold (before the service's own, lower limits): bounds the work of
#: validating a request whatever its size.
MAX_LIST = 1000


def clean_text(text: str, where: str) -> str:
    """Text a tokenizer can take: NUL characters dropped; a lone UTF-16 surrogate (not valid Unicode, and a
    tokenizer error later) rejected here, naming where it is."""
    text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{where} is not valid Unicode: a lone surrogate {text[e.start]!r} at character {e.start}; "
                         "send UTF-8 text") from None
    return text


def _repeated(ids: list[str]) -> list[str]:
    from collections import Counter

    return sorted(i for i, n in Counter(ids).items() if n > 1)


class TurnIn(BaseModel):
    """One turn: ``user``/``submission``/``seeker`` or ``assistant``/``comment``/``recommender``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["user", "submission", "seeker", "assistant", "comment", "recommender"]
    text: str

    @field_validator("text")
    @classmethod
    def _valid_text(cls, v):
        return clean_text(v, "the turn's text")


class RecommendRequest(BaseModel):
    """``POST /recommend``: a conversation, how many items, and optionally the candidates to rerank."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"context": "<submission>Looking for a mug with a striped pattern in teal.</submission>", "k": 5},
        {"turns": [{"role": "user", "text": "A teal striped mug?"}], "k": 3,
         "candidates": ["B0AAAAAAAA", "B0BBBBBBBB", "B0CCCCCCCC"]},
    ]})
    context: str | None = Field(None, description="The conversation as text with <submission>/<comment> turns "
                                                  "(plain text counts as one user turn). Give this or `turns`.")
    turns: list[TurnIn] | None = Field(None, max_length=MAX_LIST, description="The conversation as a list of turns. "
                                                                             "Give this or `context`.")
    k: int = Field(10, ge=1, description="How many items to return (at most the number of candidates); an integer.")
    candidates: list[str] | None = Field(None, max_length=MAX_LIST, description="Item IDs to rerank; retrieval is "
                                                                                 "skipped when given.")
    exclude: list[str] = Field(default_factory=list, max_length=MAX_LIST,
                               description="Item IDs never to return (e.g. shown on earlier turns).")

    @field_validator("context")
    @classmethod
    def _valid_context(cls, v):
        return None if v is None else clean_text(v, "context")

    @field_validator("candidates")
    @classmethod
    def _no_duplicates(cls, v):
        if v is not None:
            dup = _repeated(v)
            if dup:
                raise ValueError(f"candidate IDs must be unique; repeated: {', '.join(dup[:5])}")
        return v

    def conversation(self) -> list[Turn]:
        """The turns with text, whichever way they were given (validated by the ingress): turns that are only
        tags or whitespace are dropped, so a conversation of nothing but those is empty."""
        if self.turns is not None:
            return [Turn(ROLES[t.role], t.text.strip()) for t in self.turns if t.text.strip()]
        return [t for t in parse_turns(self.context or "") if t.text.strip()]


class ErrorResponse(BaseModel):
    """Every error the API answers: what went wrong and what to fix (``problems``: one line per field, on a 422)."""

    error: str
    problems: list[str] | None = None


class RankedItem(BaseModel):
    rank: int
    item_id: str
    title: str
    score: float = Field(description="The reranker's score (higher is better): the answer's log-likelihood "
                                     "(listwise) or log P(yes) - log P(no) (pointwise).")


class RecommendResponse(BaseModel):
    items: list[RankedItem]
    retrieved: bool = Field(description="True when the candidates came from the retriever, False when given.")
    candidates: int = Field(description="How many candidates the reranker scored.")
    formulation: str
    timings_ms: dict[str, float]


class ServeArgs(BaseModel):
    """Arguments of :func:`lavic_ray.serve.app.build_app` (the ``args:`` of a Serve config).

    Relative paths are resolved against the directory the application is built in.
    """

    model_config = ConfigDict(extra="forbid")
    stage2_dir: str = Field(description="stage-2 run directory (config.yaml + adapter/)")
    table: str | None = Field(None, description="item embedding table (.parquet); not needed for a title-only run")
    catalog: str = Field(description="dataset root or item metadata file: titles and the IDs clients may name")
    index: str | None = Field(None, description="saved retriever index (`lavic index`); None builds one over the catalog")
    retriever: Literal["sbert", "bm25"] = "sbert"
    sbert_model: str = DEFAULT_SBERT
    retrieve_k: int = Field(10, ge=1, le=100, description="candidates retrieved for the reranker (the paper: 10)")
    max_candidates: int = Field(20, ge=1, le=100, description="most candidates a client may send")
    max_text_chars: int = Field(8000, ge=1, description="most characters in a conversation")
    max_turns: int = Field(64, ge=1)
    max_exclude: int = Field(200, ge=0, le=MAX_LIST, description="most IDs a client may exclude")
    max_request_bytes: int = Field(1 << 20, ge=1024, description="the largest request body accepted (413 above it)")
    auth_token_env: str | None = Field(None, description="the environment variable holding the bearer token clients "
                                                         "must send (Authorization: Bearer <token>); None: no auth")
    info_details: bool = Field(False, description="/info also shows server paths and process IDs (operators only)")
    device: str = "cpu"
    dtype: str | None = Field(None, description="override the run's model dtype (bfloat16 on GPUs)")
    checkpoint: str | None = Field(None, description="override the run's model.checkpoint (same weights elsewhere)")
    rerank_batch_size: int = Field(8, ge=1, description="requests scored together by one reranker forward pass")
    rerank_batch_wait_s: float = Field(0.01, ge=0)
    retrieve_batch_size: int = Field(32, ge=1)
    torch_threads: int | None = Field(None, ge=1, description="torch threads per reranker replica (None: Ray's default)")
    merge_lora: bool = Field(True, description="merge the stage-2 LoRA into the weights when a replica starts (requests "
                                               "skip the adapter's extra matmuls; scores equal the unmerged ones to "
                                               "float rounding); false keeps the adapter separate")

    def resolved(self, base: str | Path | None = None) -> "ServeArgs":
        """A copy with every path made absolute (so replicas on any node read the same files); an object-store URI
        (``s3://...``: a stage-2 run under such a storage root) stays as it is."""
        from lavic_ray import storage

        base = Path(base) if base is not None else Path.cwd()

        def fix(p):
            if p is None or storage.is_remote(p):
                return p
            return str((base / Path(p).expanduser()).resolve())

        upd = {k: fix(getattr(self, k)) for k in ("stage2_dir", "table", "catalog", "index")}
        if self.checkpoint and Path(base / self.checkpoint).exists():
            upd["checkpoint"] = fix(self.checkpoint)
        return self.model_copy(update=upd)

    def check_paths(self) -> None:
        """Fail early, naming the missing artifact and the command that makes it."""
        need = [("stage2_dir", self.stage2_dir, "lavic recommend (or lavic quickstart)"),
                ("catalog", self.catalog, "lavic synth, or your dataset root")]
        if self.table:
            need.append(("table", self.table, "lavic embed"))
        if self.index:
            need.append(("index", self.index, "lavic index"))
        from lavic_ray import storage

        for name, path, how in need:
            if not storage.exists(path):
                raise InputMissing(f"serve args: {name} {path} does not exist (made by {how})")
