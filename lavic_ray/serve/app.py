"""The HTTP ingress and the application builder.

``POST /recommend`` -> validate -> (``Retriever``: top ``retrieve_k`` over the catalog,
unless the client gave the candidates) -> ``Reranker``: score every candidate ->
the top ``k`` with ID, title and score. ``GET /healthz`` answers when the
application is up; ``GET /docs`` is the OpenAPI UI.

Client mistakes never produce a 500: malformed JSON is a 400, everything else the
client can fix (empty conversation, unknown or repeated IDs, too many candidates,
text over the limit, bad fields) a 422, each with a message naming what to fix.
A replica that dies under a request is retried on another one (twice); only when
that fails too does the client see a 503.

Build it from a Serve config (``serve run``/``serve deploy``,
``import_path: lavic_ray.serve.app:build_app`` with ``args:``), or in Python with
``compose_app(args, options)``.
"""


import asyncio
import json
import logging
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from lavic_ray.data.records import Turn
from lavic_ray.errors import InvalidInput
from lavic_ray.retrieval.base import conversation_query
from lavic_ray.serve.reranker import Reranker
from lavic_ray.serve.retriever import Retriever
from lavic_ray.serve.schema import (
    ErrorResponse,
    RankedItem,
    RecommendRequest,
    RecommendResponse,
    ServeArgs,
)

log = logging.getLogger(__name__)

RETRIES = 2


class RequestError(Exception):
    """A client mistake: an HTTP status and a message saying what to fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


ERROR_RESPONSES = {
    400: {"model": ErrorResponse, "description": "Malformed body: not JSON, not UTF-8, or not an object."},
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer token (when the service has one)."},
    413: {"model": ErrorResponse, "description": "The body is over the service's size limit."},
    422: {"model": ErrorResponse, "description": "A field to fix: each problem names its field."},
    500: {"model": ErrorResponse, "description": "This request failed on the server (others are not affected)."},
    503: {"model": ErrorResponse, "description": "A deployment is unavailable right now: retry shortly."},
}


def make_api(max_request_bytes: int = 1 << 20, token_env: str | None = None) -> FastAPI:
    """A fresh FastAPI app with the error handlers, the body-size limit and the optional bearer-token check (one
    per ingress class, see :func:`make_ingress`)."""
    api = FastAPI(
        title="lavic-ray",
        summary="Visually-aware conversational recommendation (LaViC): retrieve candidates, rerank them with the VLM.",
        version="0.1.0",
    )
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(RequestError, _request_error)
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_exception_handler(Exception, _internal_error)
    api.add_middleware(_Guard, max_bytes=max_request_bytes, token_env=token_env)
    return api


class _Guard:
    """ASGI middleware in front of every route: the bearer token (when ``token_env`` names one; ``/healthz`` stays
    open for probes) and the body-size limit (413 before the body is parsed, whatever the Content-Length says)."""

    OPEN = ("/healthz",)

    def __init__(self, app, max_bytes: int, token_env: str | None):
        import os

        self.app, self.max_bytes = app, max_bytes
        self.token = None
        if token_env:
            self.token = os.environ.get(token_env)
            if not self.token:
                raise InvalidInput(f"serve args: auth_token_env={token_env} but that environment variable is empty or unset")

    async def _reply(self, send, status: int, message: str, headers: list | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *(headers or [])]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.token and scope.get("path") not in self.OPEN:
            import hmac

            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given, f"Bearer {self.token}"):
                return await self._reply(send, 401, "send the service's token: Authorization: Bearer <token>",
                                         [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._reply(send, 413, f"the body is {int(length)} bytes; the limit is {self.max_bytes} "
                                                "(send fewer IDs or a shorter conversation)")
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        try:
            return await self.app(scope, limited, send)
        except _TooLarge:
            return await self._reply(send, 413, f"the body is over the limit of {self.max_bytes} bytes")


class _TooLarge(Exception):
    pass


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        where = next(e for e in errors if e.get("type") == "json_invalid")
        return JSONResponse(status_code=400, content={"error": f"malformed JSON body: {where.get('ctx', {}).get('error', where.get('msg'))}"})
    problems = [f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}" for e in errors]
    return JSONResponse(status_code=422, content={"error": "invalid request: " + "; ".join(problems), "problems": problems})


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own errors (a body it cannot parse, an unknown route) in the API's shape, saying what to send."""
    msg = str(exc.detail)
    if exc.status_code == 400:
        msg = (f"malformed body ({msg}): send a UTF-8 JSON object with content-type application/json, e.g. "
               '{"context": "<submission>a teal mug?</submission>", "k": 3}')
    return JSONResponse(status_code=exc.status_code, content={"error": msg}, headers=getattr(exc, "headers", None))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("request failed: %s", exc)
    return JSONResponse(status_code=500, content={"error": "this request failed on the server (logged); other requests "
                                                           "are not affected - retry, or report it with the request"})


async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content={"error": exc.message})


def check_request(req: RecommendRequest, args: ServeArgs, known: set[str] | dict) -> tuple[list[Turn], list[str] | None]:
    """The conversation and candidates of a valid request; :class:`RequestError` otherwise."""
    if (req.context is None) == (req.turns is None):
        raise RequestError(422, "give the conversation either as `context` (text) or as `turns` (a list), not both or neither")
    turns = req.conversation()
    if not turns:
        raise RequestError(422, "the conversation is empty: it needs at least one turn with text")
    if len(turns) > args.max_turns:
        raise RequestError(422, f"the conversation has {len(turns)} turns; the limit is {args.max_turns} (send the latest ones)")
    chars = sum(len(t.text) for t in turns)
    if chars > args.max_text_chars:
        raise RequestError(422, f"the conversation has {chars} characters; the limit is {args.max_text_chars} "
                                "(send the latest turns; older ones are cut first anyway)")
    if len(req.exclude) > args.max_exclude:
        raise RequestError(422, f"{len(req.exclude)} excluded IDs; the limit is {args.max_exclude}")
    if req.candidates is not None and len(req.candidates) > max(args.max_candidates, 1) + len(req.exclude):
        raise RequestError(422, f"{len(req.candidates)} candidates; the limit is {args.max_candidates}")
    ids = list(req.candidates or []) + list(req.exclude)
    unknown = [i for i in dict.fromkeys(ids) if i not in known]
    if unknown:
        raise RequestError(422, f"unknown item ID(s): {', '.join(unknown[:10])}" + (" ..." if len(unknown) > 10 else "")
                                + " (not in the served catalog)")
    excluded = set(req.exclude)
    if req.candidates is not None:
        cands = [c for c in req.candidates if c not in excluded]
        if not cands:
            raise RequestError(422, "no candidates to rerank (the list is empty, or every candidate is excluded)")
        if len(cands) > args.max_candidates:
            raise RequestError(422, f"{len(cands)} candidates; the limit is {args.max_candidates}")
        if req.k > len(cands):
            raise RequestError(422, f"k={req.k} but only {len(cands)} candidates were given: ask for k <= {len(cands)}")
        return turns, cands
    if req.k > args.retrieve_k:
        raise RequestError(422, f"k={req.k} but the service retrieves {args.retrieve_k} candidates: ask for k <= {args.retrieve_k}")
    if len(excluded) >= len(known):
        raise RequestError(422, "no candidates to retrieve: every item of the catalog is excluded")
    return turns, None


async def _call(method, *a, what: str):
    """Call a deployment method; retry when the replica died under the request."""
    for attempt in range(RETRIES + 1):
        try:
            return await method.remote(*a)
        except RayActorError as e:
            if attempt == RETRIES:
                log.error("%s failed %d times: %s", what, attempt + 1, e)
                raise RequestError(503, f"the {what} is unavailable right now; retry shortly") from e
            log.warning("%s replica died under a request; retrying (%d/%d)", what, attempt + 1, RETRIES)
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def make_ingress(args: ServeArgs | None = None):
    """The ingress deployment, on a FastAPI app of its own (the body limit and the token from ``args``).

    A new class per application build: Serve freezes the app into the class and a
    replica (or Serve's local testing mode) mutates its frozen copy, so nothing may
    be shared between two builds in one process.
    """
    args = args or ServeArgs(stage2_dir="", catalog="")
    api = make_api(args.max_request_bytes, args.auth_token_env)

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=128)
    @serve.ingress(api)
    class LavicIngress:
        """FastAPI ingress: validates, retrieves (unless given candidates), reranks, answers."""

        fastapi_app = api  # its routes and OpenAPI spec, for docs and tests

        def __init__(self, retriever: DeploymentHandle, reranker: DeploymentHandle, args: ServeArgs):
            import os

            from lavic_ray.data.layout import Catalog

            if args.auth_token_env and not os.environ.get(args.auth_token_env):  # fail at start, not on the first request
                raise InvalidInput(f"serve args: auth_token_env={args.auth_token_env}, but that environment variable is "
                                   "empty or unset in the replica (a Kubernetes Secret, or the app's runtime_env)")
            self.retriever = retriever
            self.reranker = reranker
            self.args = args
            catalog = Catalog.load(args.catalog)
            self.titles = {it.item_id: it.title for it in catalog}
            log.info("ingress ready over %d items", len(self.titles))

        @api.get("/healthz", responses={503: ERROR_RESPONSES[503]})
        async def healthz(self) -> dict:
            """Up and serving (the catalog size is what clients can name)."""
            return {"status": "ok", "items": len(self.titles)}

        @api.get("/info", responses={k: ERROR_RESPONSES[k] for k in (401, 503)})
        async def info(self) -> dict:
            """What is served: the stage-2 run's formulation and limits (server paths and process IDs only with the
            operator setting ``info_details``)."""
            reranker = await _call(self.reranker.info, what="reranker")
            if not self.args.info_details:
                reranker = {k: v for k, v in reranker.items() if k not in PRIVATE_INFO}
            return {"reranker": reranker, "retrieve_k": self.args.retrieve_k, "max_candidates": self.args.max_candidates,
                    "max_exclude": self.args.max_exclude, "max_text_chars": self.args.max_text_chars,
                    "max_request_bytes": self.args.max_request_bytes, "retriever": self.args.retriever}

        @api.post("/recommend", response_model=RecommendResponse, responses=ERROR_RESPONSES)
        async def recommend(self, body: RecommendRequest) -> RecommendResponse:
            """Rank catalog items for a conversation (resend the whole conversation on every turn)."""
            t0 = time.perf_counter()
            turns, cands = check_request(body, self.args, self.titles)
            timings = {}
            retrieved = cands is None
            if retrieved:
                query = conversation_query("\n".join(t.text for t in turns))
                hits = await _call(self.retriever.search, query, self.args.retrieve_k, body.exclude, what="retriever")
                cands = [i for i, _ in hits]
                timings["retrieve"] = (time.perf_counter() - t0) * 1e3
            t1 = time.perf_counter()
            pairs = [(c, self.titles[c]) for c in cands]
            # the raw context text when the client sent one (a template may quote it as is), else the turns
            conv = body.context if body.context is not None else turns
            scores = await _call(self.reranker.rerank, conv, pairs, what="reranker")
            timings["rerank"] = (time.perf_counter() - t1) * 1e3
            order = sorted(range(len(cands)), key=lambda i: -scores[i])[: body.k]
            items = [RankedItem(rank=r + 1, item_id=cands[i], title=self.titles[cands[i]], score=float(scores[i]))
                     for r, i in enumerate(order)]
            timings["total"] = (time.perf_counter() - t0) * 1e3
            return RecommendResponse(items=items, retrieved=retrieved, candidates=len(cands),
                                     formulation=await self._formulation(), timings_ms={k: round(v, 2) for k, v in timings.items()})

        async def _formulation(self) -> str:
            if not hasattr(self, "_form"):
                self._form = (await _call(self.reranker.info, what="reranker"))["formulation"]
            return self._form

    return LavicIngress


DEPLOYMENT_NAMES = ("LavicIngress", "Retriever", "Reranker")
#: What /info leaves out unless ``info_details``: where things are on the servers.
PRIVATE_INFO = ("stage2_dir", "checkpoint", "pid", "device", "threads")


def build_app(args: ServeArgs) -> serve.Application:
    """Serve's application builder: ``import_path: lavic_ray.serve.app:build_app`` in a Serve config.

    Serve calls it with the config's ``args`` (validated into :class:`ServeArgs`; Serve requires
    a builder of exactly one parameter) and applies the config's ``deployments:`` options itself.
    """
    return compose_app(args)


def compose_app(args: ServeArgs | dict, options: dict[str, dict] | None = None,
                reranker: serve.Deployment | None = None) -> serve.Application:
    """The Serve application: ``LavicIngress`` -> ``Retriever`` and ``Reranker``, for building in Python.

    Args:
        args: Typed arguments (a dict is validated into :class:`ServeArgs`); paths are made absolute.
        options: Per-deployment ``.options()`` (``ray_actor_options``, ``autoscaling_config`` ...),
            as the ``deployments:`` list of a Serve config sets them; for building in Python.
        reranker: Another deployment with the ``Reranker`` interface (``rerank``, ``info``), for
            benchmarks that compare rerankers behind the same ingress.
    """
    if isinstance(args, dict):
        args = ServeArgs(**args)
    args = args.resolved()
    args.check_paths()
    options = options or {}
    unknown = set(options) - set(DEPLOYMENT_NAMES)
    if unknown:
        raise InvalidInput(f"unknown deployment(s) {sorted(unknown)}; the application has {list(DEPLOYMENT_NAMES)}")
    classes = {"LavicIngress": make_ingress(args), "Retriever": Retriever, "Reranker": reranker.options(name="Reranker") if reranker else Reranker}
    dep = {name: d.options(**options[name]) if name in options else d for name, d in classes.items()}
    retriever = dep["Retriever"].bind(args.catalog, args.index, args.retriever, args.sbert_model, args.retrieve_batch_size)
    reranker = dep["Reranker"].bind(args.stage2_dir, args.table, args.device, args.dtype, args.checkpoint,
                                    args.rerank_batch_size, args.rerank_batch_wait_s, args.torch_threads, args.merge_lora)
    return dep["LavicIngress"].bind(retriever, reranker, args)


class ServeConfigApp(BaseModel):
    """One application of a Serve config file, ready to run in Python."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str
    route_prefix: str
    args: ServeArgs
    options: dict[str, dict]
    http_options: dict


def load_serve_config(path: str | Path) -> dict:
    """A Serve config file, checked: readable YAML, a mapping, valid for Serve (``ServeDeploySchema``) and holding
    a lavic application; every problem is an :class:`InvalidInput` naming the file."""
    import yaml
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from lavic_ray.errors import InputMissing

    path = Path(path)
    if not path.is_file():
        raise InputMissing(f"Serve config {path} not found (run from the repository root, or pass --serve-config)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        from lavic_ray.config import yaml_problem

        raise InvalidInput(f"{path}: not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(raw, dict):
        raise InvalidInput(f"{path}: a Serve config is a mapping (applications:, http_options: ...), got "
                           f"{'an empty file' if raw is None else type(raw).__name__}")
    try:
        ServeDeploySchema.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()[:5])
        raise InvalidInput(f"{path}: not a valid Serve config: {problems}") from None
    if not any(str(a.get("import_path", "")).startswith("lavic_ray.serve.app:") for a in raw.get("applications", [])):
        raise InvalidInput(f"{path}: no application with import_path lavic_ray.serve.app:build_app")
    return raw


def with_overrides(raw: dict, args: dict | None = None, host: str | None = None, port: int | None = None,
                   base: str | Path | None = None) -> dict:
    """The config with the lavic application's ``args`` overridden (validated as :class:`ServeArgs`, paths made
    absolute against ``base``) and ``http_options`` host/port set; every other field as the file has it."""
    import copy

    out = copy.deepcopy(raw)
    app = next(a for a in out["applications"] if str(a.get("import_path", "")).startswith("lavic_ray.serve.app:"))
    sa = ServeArgs(**{**app.get("args", {}), **(args or {})}).resolved(base)
    sa.check_paths()
    app["args"] = sa.model_dump(exclude_none=True)
    http = out.setdefault("http_options", {})
    if host:
        http["host"] = host
    if port is not None:
        http["port"] = port
    return out


def read_serve_config(path: str | Path, overrides: dict | None = None, base: str | Path | None = None) -> ServeConfigApp:
    """The lavic application of a Serve config (``serve_configs/*.yaml``), args overridden and resolved, for
    building it in Python (benchmarks); ``lavic serve`` hands the whole file to Serve instead.

    Relative paths resolve against ``base`` (default: the current directory), as ``serve run`` does.
    """
    raw = load_serve_config(path)
    apps = [a for a in raw.get("applications", []) if str(a.get("import_path", "")).startswith("lavic_ray.serve.app:")]
    app = apps[0]
    args = ServeArgs(**{**app.get("args", {}), **(overrides or {})}).resolved(base)
    opts = {}
    for d in app.get("deployments", []):
        d = dict(d)
        opts[d.pop("name")] = d
    return ServeConfigApp(name=app.get("name", "lavic"), route_prefix=app.get("route_prefix", "/"), args=args,
                          options=opts, http_options=raw.get("http_options", {}))
