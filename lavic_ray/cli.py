"""The ``lavic`` command.

Every subcommand that runs a workflow step is a thin shell over :mod:`lavic_ray.workflow`:
its flags become dotted config overrides (``--catalog DIR`` is ``dataset.root=DIR``,
``--checkpoint C`` is ``model.checkpoint=C`` ...) on top of ``--config`` files and
``--set`` overrides, and it calls the same step the ``jobs/`` entry points run.

A mistake the user can fix (:class:`lavic_ray.errors.UserError`: a config value, a data
file, a missing artifact) exits with status 2 and one line saying what to fix; anything
else is a bug and keeps its traceback (``-v`` shows every log line as it happens).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

from lavic_ray import __version__

log = logging.getLogger("lavic")


# ---------------------------------------------------------------------------- config from flags


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=[], metavar="FILE.yaml",
                   help="YAML config file(s), merged in order (see jobs/configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set synth.items=200 (repeatable; applied last)")


#: flag attribute -> the dotted config key it sets (when given)
FLAG_KEYS = {
    "catalog": "dataset.root", "checkpoint": "model.checkpoint", "views": "dataset.views",
    "max_failures": "job.max_failures", "variant": "job.variant", "workdir": "storage_root",
    "batch_size": "embed.batch_size", "actors": "embed.actors", "seed": "eval.seed", "limit": "eval.limit",
}


def _flag_overrides(args, keys=FLAG_KEYS) -> list[str]:
    out = []
    for attr, key in keys.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{key}={json.dumps(str(value)) if isinstance(value, (str, Path)) else value}")
    return out


def _load(args, extra: list[str] | None = None, base: list | None = None):
    """``base`` presets, then ``--config`` files, then the flags' overrides, then ``--set``."""
    from lavic_ray.config import load_config

    return load_config([*(base or []), *args.config] or None, [*_flag_overrides(args), *(extra or []), *args.overrides])


def _print_result(console, args, result, summary: str) -> None:
    print(json.dumps(result, default=str) if getattr(args, "json", False) else summary, file=console.out, flush=True)


@contextlib.contextmanager
def _long_command(args, art_root: Path | str, name: str):
    """A long command's console session: step lines and bars on the terminal, the rest to a log file.

    A Ray the command connected to is let go before the session ends, while the output still goes to the
    log: its workers' last lines (flushed at shutdown) would otherwise land on the terminal, after a
    ``--json`` result."""
    from lavic_ray import console

    stamp = time.strftime("%Y%m%d-%H%M%S")
    from lavic_ray.runtime import ray_released

    from lavic_ray import storage

    log_file = storage.local(str(art_root)) / "logs" / f"{name}-{stamp}.log"
    with console.session(log_file, verbose=args.verbose) as c, ray_released():
        yield c
    storage.publish(log_file)


# ---------------------------------------------------------------------------- data


def cmd_validate(args) -> int:
    from lavic_ray.data.validate import validate_root

    report = validate_root(args.root, images_dir=args.images_dir, images=args.images)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(report.render(args.max_problems))
    failed = bool(report.errors) or (args.strict and bool(report.warnings))
    return 1 if failed else 0


def cmd_synth(args) -> int:
    from lavic_ray.data.synthetic import generate
    from lavic_ray.retrieval import make_retriever

    cfg = _load(args, [f"synth.{k}={getattr(args, k)}" for k in ("items", "conversations", "scheme", "image_size")
                       if getattr(args, k) is not None]
                + ([f"synth.decisive=[{args.decisive}]"] if args.decisive is not None else [])
                + ([f"synth.seed={args.synth_seed}"] if args.synth_seed is not None else []))
    manifest = generate(cfg.synth, args.out, make_retriever("sbert", cfg.retrieval), force=args.force)
    print(json.dumps(manifest) if args.json else
          f"wrote {manifest['items']} items ({manifest['images']} images) and "
          f"{sum(manifest['conversations'].values())} conversations {manifest['conversations']} to {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from lavic_ray.data.layout import Catalog, read_conversations
    from lavic_ray.eval.evaluate import evaluate, format_table
    from lavic_ray.eval.methods import EvalContext

    cfg = _load(args)
    if args.stage2:
        from lavic_ray.config import LavicRun

        runs = {**cfg.eval.runs, args.method: LavicRun(stage2_dir=args.stage2, table=args.table)}
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"runs": runs})})
    convs = read_conversations(args.conversations, candidate_keys=(args.candidates_key,))
    ctx = EvalContext(cfg, Catalog.load(args.items) if args.items else None)
    metrics = evaluate(convs, args.method, args.candidates_key, ctx, out_dir=args.out)
    metrics["conversations_file"] = str(args.conversations)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(format_table({args.method: metrics}))
        print(f"{metrics['conversations']} conversations, {metrics['gt_items']} ground-truth items, candidates from {args.candidates_key}")
    return 0


def cmd_index(args) -> int:
    from lavic_ray.data.layout import Catalog
    from lavic_ray.retrieval import make_retriever

    cfg = _load(args)
    catalog = Catalog.load(args.items)
    r = make_retriever(args.retriever, cfg.retrieval).index_items(list(catalog), cfg.retrieval.item_text)
    r.save(args.out)
    print(f"indexed {len(catalog)} items with {args.retriever} into {args.out}")
    return 0


def cmd_search(args) -> int:
    from lavic_ray.retrieval import Retriever

    r = Retriever.load(args.index)
    hits = r.search([args.query], k=args.k)[0]
    if args.json:
        print(json.dumps([{"item_id": i, "score": s} for i, s in hits]))
    else:
        for rank, (i, s) in enumerate(hits, start=1):
            print(f"{rank:3d}  {i}  {s:.4f}")
    return 0


# ---------------------------------------------------------------------------- workflow steps


def _resolved(args):
    from lavic_ray import preflight, workflow

    cfg = _load(args)
    preflight.check(cfg, args.command)  # the checkpoint, the dataset and the storage, before any worker starts
    return workflow.resolve(cfg)


def cmd_small_model(args) -> int:
    from lavic_ray.model.small import build_small_model

    sm_keys = {k: f"small_model.{k}" for k in ("epochs", "lr", "batch_size", "llm_lora_r", "vision_image_size",
                                                 "step_budget")} | {"model_seed": "small_model.seed"}
    cfg = _load(args, _flag_overrides(args, sm_keys))
    with _long_command(args, args.out, "small-model") as console:
        with console.step("small model"):
            out = build_small_model(args.catalog, args.out, **cfg.small_model.model_dump(exclude={"cpus"}))
        _print_result(console, args, {"model": str(out)}, f"small model saved to {out}")
    return 0


def _run_stage(args, stage: str) -> int:
    from lavic_ray import workflow

    cfg, art = _resolved(args)
    out = Path(args.out)
    with _long_command(args, out, stage) as console:
        with console.step("stage 1: visual knowledge self-distillation" if stage == "stage1"
                          else f"stage 2 ({cfg.job.variant}): recommendation fine-tuning"):
            if stage == "stage1":
                workflow.stage1(cfg, art, out=out, use_ray=not args.no_ray)
            else:
                workflow.stage2(cfg, art, cfg.job.variant, out=out, table=Path(args.table) if args.table else None,
                                use_ray=not args.no_ray)
        history = json.loads((out / "history.json").read_text())
        final = history[-1] if history else {}
        _print_result(console, args, final, f"{stage} done: {final}; adapter in {out / 'adapter'}")
    return 0


def cmd_distill(args) -> int:
    return _run_stage(args, "stage1")


def cmd_recommend(args) -> int:
    return _run_stage(args, "stage2")


def _step(args, log_dir: Path, name: str, label: str, run, summary) -> int:
    """A workflow step with the console of a long command; its result printed last."""
    cfg, art = _resolved(args)
    with _long_command(args, log_dir, name) as console:
        with console.step(label):
            result = run(cfg, art)
        _print_result(console, args, result, summary(result))
    return 0


def cmd_preprocess(args) -> int:
    from lavic_ray import workflow

    return _step(args, Path(args.out), "preprocess", "preprocess: decode, validate and tile every image",
                 lambda cfg, art: workflow.preprocess(cfg, art, out=Path(args.out), use_ray=not args.no_ray),
                 lambda m: (f"{m['images']} images: {m['ok']} ok, {m['bad']} bad {m['bad_by_reason'] or ''} -> {args.out} "
                            f"(bad_images.jsonl, manifest.json); this run: {m['processed_this_run']} images in "
                            f"{m['seconds_this_run']} s"))


def cmd_describe(args) -> int:
    from lavic_ray import workflow

    return _step(args, Path(args.out), "describe", "describe: teacher descriptions from the full-token VLM",
                 lambda cfg, art: workflow.describe(cfg, art, out=Path(args.out), use_ray=not args.no_ray),
                 lambda m: (f"described {m['described_this_run']} images ({m['images_per_s']} images/s, "
                            f"{m['tokens_per_s']} tokens/s); {m['skipped']} already described, "
                            f"{len(m['unreadable'])} unreadable -> {m['file']}"))


def cmd_embed(args) -> int:
    from lavic_ray import workflow

    out, adapter = Path(args.out), Path(args.adapter) if args.adapter else None

    def run(cfg, art):
        which = "distilled" if adapter else "undistilled"
        return {"table": str(workflow.embed(cfg, art, which, out=out, adapter=adapter, use_ray=not args.no_ray))}

    return _step(args, out.parent, "embed", "embed: every item's 5 vectors", run,
                 lambda r: f"item embedding table written to {r['table']}")


def cmd_prompt(args) -> int:
    """The prompt the configuration builds, as text (image slots as ``<image>``, no BOS) or, with ``--ids``, as ids."""
    from lavic_ray.data.layout import Catalog, read_conversations
    from lavic_ray.errors import InvalidInput
    from lavic_ray.model.prompts import PromptTemplates
    from lavic_ray.variants import VARIANTS

    cfg = _load(args)
    s2 = cfg.stage2
    use_images = True if args.stage == 1 else s2.use_images and VARIANTS[cfg.job.variant].use_images
    items = args.items or cfg.dataset.root
    if not items:
        raise InvalidInput("the titles come from item metadata: pass --items (a dataset root or metadata file) or --catalog")
    catalog = Catalog.load(items)
    if args.stage == 1:
        if not args.item:
            raise InvalidInput("--stage 1 needs --item ID")
        item = catalog[args.item]

        def build(t):
            return t.stage1_prompt(item.title, item.item_id)
    else:
        if not args.conversations:
            raise InvalidInput("--stage 2 needs --conversations FILE.jsonl (and --index N)")
        convs = read_conversations(args.conversations, (s2.candidates_key,))
        if not 0 <= args.index < len(convs):
            raise InvalidInput(f"--index {args.index}: {args.conversations} has {len(convs)} conversations (0 to {len(convs) - 1})")
        conv = convs[args.index]
        ids = list(conv.candidate_list(s2.candidates_key))
        missing = catalog.missing(ids)
        if missing:
            raise InvalidInput(f"{len(missing)} candidate(s) have no title in {items}: {', '.join(missing[:5])}")
        pairs = [(i, catalog[i].title) for i in ids]
        if s2.formulation == "pointwise" and not 0 <= args.candidate < len(pairs):
            raise InvalidInput(f"--candidate {args.candidate}: the list has {len(pairs)} candidates")

        def build(t):
            if s2.formulation == "listwise":
                return t.listwise_prompt(conv.context, pairs)
            return t.pointwise_prefix(conv.context) + t.pointwise_block(*pairs[args.candidate])
    if not args.ids:
        sys.stdout.write(build(PromptTemplates(cfg.prompts, s2.answer, use_images)).text)
        return 0
    from transformers import AutoConfig, AutoTokenizer

    from lavic_ray import workflow
    from lavic_ray.artifacts import Artifacts
    from lavic_ray.model.prompts import PromptBuilder

    checkpoint = workflow.ensure_model(cfg, Artifacts(cfg.storage_root), Path(items), build=False)
    tok = AutoTokenizer.from_pretrained(checkpoint)
    builder = PromptBuilder(tok, int(AutoConfig.from_pretrained(checkpoint).image_token_id),
                            cfg.stage1.max_length if args.stage == 1 else s2.max_length, cfg.prompts, s2.answer, use_images)
    print(json.dumps(builder.encode(build(builder)).input_ids))
    return 0


def cmd_quickstart(args) -> int:
    from lavic_ray.quickstart import quickstart_config, run_quickstart

    cfg = quickstart_config(args.config, [*_flag_overrides(args), *args.overrides])
    with _long_command(args, cfg.storage_root, "quickstart") as console:
        results = run_quickstart(cfg, console=console)
        if args.json:
            print(json.dumps(results), file=console.out, flush=True)
    return 0


def _kv(pairs: list[str]) -> dict:
    import yaml

    from lavic_ray.errors import InvalidInput

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"expected KEY=VALUE, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def cmd_serve(args) -> int:
    """Hand the Serve config - every field of it, the lavic application's args overridden - to Serve's own runner
    (``serve run``): proxy location, runtime environments, logging and autoscaling are Serve's to apply."""
    import subprocess
    import tempfile

    import yaml

    from lavic_ray.artifacts import Artifacts
    from lavic_ray.serve.app import load_serve_config, with_overrides

    overrides = _kv(args.arg)
    if args.serve_workdir:
        art = Artifacts(args.serve_workdir)
        overrides = {"stage2_dir": str(art.stage2("lavic")), "table": str(art.table("distilled")), "catalog": str(art.catalog),
                     **overrides}
    doc = with_overrides(load_serve_config(args.serve_config), overrides, args.host, args.port)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="lavic-serve-", delete=False) as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    http = doc.get("http_options", {})
    url = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
    print(f"lavic serve: {args.serve_config} -> serve run {fh.name}; {url} (POST /recommend, GET /healthz, docs at "
          f"{url}/docs){'' if args.detach else '; Ctrl-C stops it'}", flush=True)
    cmd = [str(Path(sys.executable).parent / "serve"), "run", fh.name]
    if args.address:
        cmd += ["--address", args.address]
    if args.detach:
        cmd.append("--non-blocking")
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


# ---------------------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    from lavic_ray.config import SmallModelConfig
    from lavic_ray.variants import VARIANTS

    parser = argparse.ArgumentParser(prog="lavic", description="LaViC on Ray: data, training, evaluation and serving.")
    parser.add_argument("--version", action="version", version=f"lavic-ray {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="show every log line (Ray's and DeepSpeed's too) as it happens")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, parents=[common])
        p.set_defaults(fn=fn)
        return p

    p = add("validate", cmd_validate, "check a dataset in the LaViC layout; every problem with file, line and field")
    p.add_argument("root", help="dataset root (item2meta_*.json[l], images/, <domain>/<split>.jsonl)")
    p.add_argument("--json", action="store_true", help="print one JSON report")
    p.add_argument("--images", choices=("none", "header", "decode"), default="header",
                   help="image check: none, header (fast, default) or decode (every pixel)")
    p.add_argument("--images-dir", help="image directory (default ROOT/images)")
    p.add_argument("--max-problems", type=int, default=50, help="problems listed in the text report")
    p.add_argument("--strict", action="store_true", help="exit non-zero on warnings too")

    p = add("synth", cmd_synth, "write the visually grounded synthetic catalog in the LaViC layout")
    p.add_argument("--out", required=True, help="output directory (empty, or a previous synthetic dataset with --force)")
    p.add_argument("--seed", dest="synth_seed", type=int, help="synth.seed")
    p.add_argument("--items", type=int, help="synth.items")
    p.add_argument("--conversations", type=int, help="synth.conversations (over train/valid/test)")
    p.add_argument("--scheme", choices=["products", "gadgets"], help="synth.scheme: products (default: decisive colour "
                   "and pattern, 672 px) or gadgets (other objects; decisive motif and build; 336 px)")
    p.add_argument("--image-size", type=int, help="synth.image_size (default: the scheme's)")
    p.add_argument("--decisive", help="synth.decisive: gadgets only, the two attributes a request asks for, comma-separated, "
                                      "of motif, build and colour (default: motif,build)")
    p.add_argument("--force", action="store_true", help="replace a previous synthetic dataset in --out")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    _config_args(p)

    p = add("evaluate", cmd_evaluate, "rank each conversation's candidates with a method and report metrics")
    p.add_argument("--conversations", required=True, help="a {train,valid,test}.jsonl file")
    p.add_argument("--method", required=True,
                   help="first-candidate, random, sbert, bm25, " + ", ".join(VARIANTS) + ", lavic-generate")
    p.add_argument("--candidates-key", default="candidates_st", help="candidate list field (default candidates_st)")
    p.add_argument("--items", help="dataset root or item metadata file (needed by methods that read titles)")
    p.add_argument("--seed", type=int, help="seed of the random method (eval.seed)")
    p.add_argument("--limit", type=int, help="evaluate only the first N conversations (eval.limit)")
    p.add_argument("--out", help="write metrics.json, predictions.jsonl and config.yaml here")
    p.add_argument("--stage2", help="LaViC methods: the stage-2 directory to evaluate")
    p.add_argument("--table", help="LaViC methods: the item embedding table")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _config_args(p)

    p = add("index", cmd_index, "build and save a retrieval index over a catalog's items")
    p.add_argument("--items", required=True, help="dataset root or item metadata file")
    p.add_argument("--retriever", choices=("sbert", "bm25"), default="sbert")
    p.add_argument("--out", required=True)
    _config_args(p)

    p = add("search", cmd_search, "query a saved retrieval index")
    p.add_argument("--index", required=True)
    p.add_argument("--query", required=True)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--json", action="store_true")

    sm = SmallModelConfig.model_fields
    p = add("small-model", cmd_small_model, "build the small LLaVA-Next (SmolLM2 + DINOv2, its projector trained on the catalog)")
    p.add_argument("--catalog", required=True, help="dataset root whose images and descriptions train the vision side")
    p.add_argument("--out", required=True)
    for flag, kind in (("epochs", int), ("lr", float), ("batch-size", int), ("llm-lora-r", int),
                       ("vision-image-size", int), ("step-budget", int)):
        key = flag.replace("-", "_")
        p.add_argument(f"--{flag}", type=kind, help=f"small_model.{key}: {sm[key].description or ''} "
                                                    f"(default {sm[key].default})")
    p.add_argument("--seed", dest="model_seed", type=int, help="small_model.seed: initialisation and data order")
    p.add_argument("--json", action="store_true")
    _config_args(p)

    for name, fn, help_ in (("distill", cmd_distill, "stage 1: visual knowledge self-distillation (LoRA on vision tower + projector)"),
                            ("recommend", cmd_recommend, "stage 2: recommendation fine-tuning (LoRA on the LLM)")):
        p = add(name, fn, help_)
        p.add_argument("--catalog", help="dataset root (dataset.root)")
        p.add_argument("--out", required=True, help="stage directory (adapter/, history.json, Ray Train checkpoints); "
                                                    "a finished one is not trained again")
        p.add_argument("--checkpoint", help="LLaVA-Next checkpoint (model.checkpoint)")
        if name == "recommend":
            p.add_argument("--variant", choices=list(VARIANTS), help="job.variant (default lavic)")
            p.add_argument("--table", help="item embedding table from lavic embed (default: the variant's table under "
                                           "storage_root; none for lavic-title-only)")
        p.add_argument("--no-ray", action="store_true", help="run in this process (one GPU, or no Ray)")
        p.add_argument("--max-failures", type=int, help="Ray Train worker failures to retry from the last checkpoint "
                                                        "(job.max_failures)")
        p.add_argument("--json", action="store_true", help="print the final metrics as one JSON line")
        _config_args(p)

    for name, fn, what, out in (
        ("preprocess", cmd_preprocess, "decode, validate and tile every image into Parquet shards (Ray Data); fetches image "
         "URLs; bad images listed with their reason", "output directory (a rerun skips finished shards)"),
        ("describe", cmd_describe, "teacher descriptions from the full-token VLM (Ray Data actor pool)",
         "output directory (descriptions.parquet; a rerun skips done images)"),
    ):
        p = add(name, fn, what)
        p.add_argument("--catalog", help="dataset root (dataset.root)")
        p.add_argument("--out", required=True, help=out)
        p.add_argument("--checkpoint", help="the checkpoint to use (model.checkpoint)")
        p.add_argument("--no-ray", action="store_true", help="run in this process")
        p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
        _config_args(p)

    p = add("embed", cmd_embed, "the item embedding table: every item's 5 vectors, computed once (Ray Data)")
    p.add_argument("--catalog", help="dataset root (dataset.root)")
    p.add_argument("--out", required=True, help="the .parquet file to write")
    p.add_argument("--adapter", help="stage-1 adapter (omit: the undistilled vision side)")
    p.add_argument("--views", help="a lavic preprocess output directory: use its tiled views, decode no image (dataset.views)")
    p.add_argument("--checkpoint", help="model.checkpoint")
    p.add_argument("--batch-size", type=int, help="items per batch (embed.batch_size)")
    p.add_argument("--actors", type=int, help="actors in the pool (embed.actors)")
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--json", action="store_true")
    _config_args(p)

    p = add("serve", cmd_serve, "serve the recommendation API (Ray Serve: retriever -> LaViC reranker)")
    p.add_argument("--serve-config", default="serve_configs/local.yaml", help="Serve config file (default serve_configs/local.yaml)")
    p.add_argument("--workdir", dest="serve_workdir",
                   help="serve a quickstart work directory's artifacts (stage2/lavic, items/distilled.parquet, catalog)")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override an application arg, e.g. --arg retrieve_k=20 (repeatable)")
    p.add_argument("--host", help="HTTP host (default from the config: 127.0.0.1 locally)")
    p.add_argument("--port", type=int, help="HTTP port (default from the config)")
    p.add_argument("--address", help="a running Ray cluster ('auto'); default: start a local one")
    p.add_argument("--detach", action="store_true", help="return after deploying (with --address: it keeps serving)")

    p = add("prompt", cmd_prompt, "print the prompt a configuration builds for a conversation (stage 2) or an item "
                                  "(stage 1): its text, image slots as <image>, or with --ids its token ids")
    p.add_argument("--stage", type=int, choices=(1, 2), default=2)
    p.add_argument("--conversations", help="stage 2: a {train,valid,test}.jsonl file")
    p.add_argument("--index", type=int, default=0, help="stage 2: which conversation of the file (0-based)")
    p.add_argument("--candidate", type=int, default=0, help="stage 2, pointwise: which candidate's prompt (0-based)")
    p.add_argument("--item", help="stage 1: the item ID")
    p.add_argument("--items", help="dataset root or item metadata file with the titles (default dataset.root)")
    p.add_argument("--catalog", help="dataset root (dataset.root)")
    p.add_argument("--variant", choices=list(VARIANTS), help="job.variant: lavic-title-only renders no image slots")
    p.add_argument("--ids", action="store_true", help="print the token ids (needs the checkpoint's tokenizer; truncation "
                                                      "applied) instead of the text (before truncation)")
    _config_args(p)

    p = add("quickstart", cmd_quickstart, "the main job on the embedded default: synthetic catalog -> ... -> report")
    p.add_argument("--workdir", default=None, help="where every artifact goes (storage_root; default lavic_runs/quickstart)")
    p.add_argument("--json", action="store_true", help="last line printed: one JSON object of metrics per method")
    _config_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    from lavic_ray.errors import UserError
    from lavic_ray.preflight import PreflightFailed

    args = build_parser().parse_args(argv)
    if not any(isinstance(h, logging.StreamHandler) for h in logging.getLogger().handlers):
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)
    try:
        return args.fn(args)
    except PreflightFailed as e:
        for line in e.problems:
            print(f"lavic {args.command}: error: {line}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"error": str(e), "problems": e.problems}))
        return 2
    except UserError as e:
        print(f"lavic {args.command}: error: {e}", file=sys.stderr)
        if getattr(args, "json", False):  # a --json caller parses stdout: the error is there too
            print(json.dumps({"error": str(e)}))
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
