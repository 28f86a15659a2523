"""The ``lavic`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("lavic")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see jobs/configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set synth.items=200 (repeatable)")


def _load(args, extra: list[str] | None = None):
    from lavic_ray.config import load_config

    return load_config(args.config, [*(extra or []), *args.overrides])


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

    extra = []
    for key in ("seed", "items", "conversations"):
        if getattr(args, key) is not None:
            extra.append(f"synth.{key}={getattr(args, key)}")
    cfg = _load(args, extra)
    manifest = generate(cfg.synth, args.out, force=args.force)
    print(json.dumps(manifest) if args.json else
          f"wrote {manifest['items']} items ({manifest['images']} images) and "
          f"{sum(manifest['conversations'].values())} conversations {manifest['conversations']} to {args.out}")
    return 0


def _read_catalog(path: str | None):
    from lavic_ray.data.layout import Catalog

    return Catalog.load(path) if path else None


def cmd_evaluate(args) -> int:
    from lavic_ray.data.layout import read_conversations
    from lavic_ray.eval.evaluate import EvalContext, evaluate, format_table

    extra = [f"eval.seed={args.seed}"] if args.seed is not None else []
    if args.limit is not None:
        extra.append(f"eval.limit={args.limit}")
    cfg = _load(args, extra)
    if args.stage2:
        from lavic_ray.config import LavicRun

        runs = {**cfg.eval.runs, args.method: LavicRun(stage2_dir=args.stage2, table=args.table)}
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"runs": runs})})
    convs = read_conversations(args.conversations, candidate_keys=(args.candidates_key,))
    ctx = EvalContext(cfg, _read_catalog(args.items))
    metrics = evaluate(convs, args.method, args.candidates_key, ctx, out_dir=args.out)
    metrics["conversations_file"] = str(args.conversations)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(format_table({args.method: metrics}))
        print(f"{metrics['conversations']} conversations, {metrics['gt_items']} ground-truth items, candidates from {args.candidates_key}")
    return 0


def cmd_index(args) -> int:
    from lavic_ray.retrieval import make_retriever

    cfg = _load(args)
    rc = cfg.retrieval
    catalog = _read_catalog(args.items)
    kwargs = ({"model": rc.sbert_model, "device": rc.device, "batch_size": rc.batch_size} if args.retriever == "sbert"
              else {"k1": rc.bm25_k1, "b": rc.bm25_b, "stem": rc.bm25_stem})
    r = make_retriever(args.retriever, **kwargs).index_items(list(catalog), rc.item_text)
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


def cmd_small_model(args) -> int:
    from lavic_ray.model.small import build_small_model

    out = build_small_model(args.catalog, args.out, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                            seed=args.seed, max_images=args.max_images, llm_lora_r=args.llm_lora_r,
                            contrastive_epochs=args.contrastive_epochs, vision_image_size=args.vision_image_size)
    print(f"small model saved to {out}")
    return 0


def _run_stage(args, stage: str) -> int:
    from lavic_ray.train.run import run_local, run_ray

    cfg = _load(args, [f"model.checkpoint={args.checkpoint}"] if args.checkpoint else [])
    table = getattr(args, "table", None)
    if args.no_ray:
        final = run_local(stage, cfg, args.catalog, args.out, table)
    else:
        final = run_ray(stage, cfg, args.catalog, args.out, table, max_failures=args.max_failures).metrics
    print(json.dumps(final) if args.json else f"{stage} done: {final}; adapter in {Path(args.out) / 'adapter'}")
    return 0


def cmd_distill(args) -> int:
    return _run_stage(args, "stage1")


def cmd_recommend(args) -> int:
    return _run_stage(args, "stage2")


def _run_pipeline(args, run, summary) -> int:
    """A Ray Data job over ``--catalog`` into ``--out``: its summary as one JSON line or a sentence."""
    cfg = _load(args, [f"model.checkpoint={args.checkpoint}"] if args.checkpoint else [])
    m = run(cfg, args.catalog, args.out, use_ray=not args.no_ray)
    print(json.dumps(m) if args.json else summary(m))
    return 0


def cmd_preprocess(args) -> int:
    from lavic_ray.pipeline.preprocess import run_preprocess

    return _run_pipeline(args, run_preprocess, lambda m: (
        f"{m['images']} images: {m['ok']} ok, {m['bad']} bad {m['bad_by_reason'] or ''} -> {args.out} "
        f"(bad_images.jsonl, manifest.json); this run: {m['processed_this_run']} images in {m['seconds_this_run']} s"))


def cmd_describe(args) -> int:
    from lavic_ray.pipeline.describe import run_describe

    return _run_pipeline(args, run_describe, lambda m: (
        f"described {m['described_this_run']} images ({m['images_per_s']} images/s, {m['tokens_per_s']} tokens/s); "
        f"{m['skipped']} already described, {len(m['unreadable'])} unreadable -> {m['file']}"))


def cmd_embed(args) -> int:
    from lavic_ray.pipeline.embed import run_embed

    cfg = _load(args, [f"model.checkpoint={args.checkpoint}"] if args.checkpoint else [])
    out = run_embed(cfg, args.catalog, args.out, adapter=args.adapter, use_ray=not args.no_ray,
                    batch_size=args.batch_size, actors=args.actors, views=args.views)
    print(f"item embedding table written to {out}")
    return 0


def cmd_quickstart(args) -> int:
    from lavic_ray.quickstart import quickstart_config, run_quickstart

    cfg = quickstart_config(args.config, args.overrides)
    results = run_quickstart(cfg, workdir=args.workdir, echo=not args.json)
    if args.json:
        print(json.dumps(results))
    return 0


def _kv(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def cmd_serve(args) -> int:
    import time

    from lavic_ray.serve.app import compose_app, read_serve_config

    overrides = _kv(args.arg)
    if args.workdir:
        w = Path(args.workdir)
        overrides = {"stage2_dir": str(w / "stage2" / "lavic"), "table": str(w / "items" / "distilled.parquet"),
                     "catalog": str(w / "catalog"), **overrides}
    if not Path(args.serve_config).is_file():
        raise FileNotFoundError(f"Serve config {args.serve_config} not found (run from the repository root, or pass --serve-config)")
    app = read_serve_config(args.serve_config, overrides)
    app.args.check_paths()
    http = {**app.http_options, **({"port": args.port} if args.port is not None else {}),
            **({"host": args.host} if args.host else {})}
    import ray
    from ray import serve

    ray.init(address=args.address, include_dashboard=False, ignore_reinit_error=True)
    serve.start(http_options=http)
    serve.run(compose_app(app.args, app.options), name=app.name, route_prefix=app.route_prefix, blocking=False)
    url = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
    print(f"lavic serve: {app.name} up at {url}  (POST /recommend, GET /healthz, docs at {url}/docs)", flush=True)
    if args.detach:
        return 0
    print("Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from lavic_ray.config import SmallModelConfig

    parser = argparse.ArgumentParser(prog="lavic", description="LaViC on Ray: data, training, evaluation and serving.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a dataset in the LaViC layout; every problem with file, line and field")
    p.add_argument("root", help="dataset root (item2meta_*.json[l], images/, <domain>/<split>.jsonl)")
    p.add_argument("--json", action="store_true", help="print one JSON report")
    p.add_argument("--images", choices=("none", "header", "decode"), default="header",
                   help="image check: none, header (fast, default) or decode (every pixel)")
    p.add_argument("--images-dir", help="image directory (default ROOT/images)")
    p.add_argument("--max-problems", type=int, default=50, help="problems listed in the text report")
    p.add_argument("--strict", action="store_true", help="exit non-zero on warnings too")
    p.set_defaults(fn=cmd_validate)

    p = sub.add_parser("synth", help="write the visually grounded synthetic catalog in the LaViC layout")
    p.add_argument("--out", required=True, help="output directory (empty, or a previous synthetic dataset with --force)")
    p.add_argument("--seed", type=int)
    p.add_argument("--items", type=int)
    p.add_argument("--conversations", type=int, help="conversations over train/valid/test")
    p.add_argument("--force", action="store_true", help="replace a previous synthetic dataset in --out")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    _config_args(p)
    p.set_defaults(fn=cmd_synth)

    p = sub.add_parser("evaluate", help="rank each conversation's candidates with a method and report metrics")
    p.add_argument("--conversations", required=True, help="a {train,valid,test}.jsonl file")
    p.add_argument("--method", required=True,
                   help="first-candidate, random, sbert, bm25, lavic, lavic-title-only, lavic-no-distill, lavic-generate")
    p.add_argument("--candidates-key", default="candidates_st", help="candidate list field (default candidates_st)")
    p.add_argument("--items", help="dataset root or item metadata file (needed by methods that read titles)")
    p.add_argument("--seed", type=int, help="seed of the random method")
    p.add_argument("--limit", type=int, help="evaluate only the first N conversations")
    p.add_argument("--out", help="write metrics.json, predictions.jsonl and config.yaml here")
    p.add_argument("--stage2", help="LaViC methods: the stage-2 directory to evaluate")
    p.add_argument("--table", help="LaViC methods: the item embedding table")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _config_args(p)
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("index", help="build and save a retrieval index over a catalog's items")
    p.add_argument("--items", required=True, help="dataset root or item metadata file")
    p.add_argument("--retriever", choices=("sbert", "bm25"), default="sbert")
    p.add_argument("--out", required=True)
    _config_args(p)
    p.set_defaults(fn=cmd_index)

    p = sub.add_parser("search", help="query a saved retrieval index")
    p.add_argument("--index", required=True)
    p.add_argument("--query", required=True)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser("small-model", help="build the small LLaVA-Next (SmolLM2 + a vision side trained on the catalog)")
    p.add_argument("--catalog", required=True, help="dataset root whose images and descriptions train the vision side")
    p.add_argument("--out", required=True)
    sm = SmallModelConfig()  # the same defaults as the config's small_model section (what the quickstart builds)
    p.add_argument("--epochs", type=int, default=sm.epochs, help="full-token epochs")
    p.add_argument("--lr", type=float, default=sm.lr)
    p.add_argument("--batch-size", type=int, default=sm.batch_size)
    p.add_argument("--max-images", type=int, default=sm.max_images)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llm-lora-r", type=int, default=sm.llm_lora_r,
                   help="LoRA rank on the LLM during the full-token step, merged afterwards (0: the LLM stays frozen)")
    p.add_argument("--contrastive-epochs", type=int, default=sm.contrastive_epochs, help="CLIP-style tower pretraining epochs (0: skip)")
    p.add_argument("--vision-image-size", type=int, default=sm.vision_image_size, help="the vision tower's input size (px)")
    p.set_defaults(fn=cmd_small_model)

    for name, fn, help_ in (("distill", cmd_distill, "stage 1: visual knowledge self-distillation (LoRA on vision tower + projector)"),
                            ("recommend", cmd_recommend, "stage 2: recommendation fine-tuning (LoRA on the LLM)")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--catalog", required=True, help="dataset root")
        p.add_argument("--out", required=True, help="stage directory (adapter/, history.json, Ray Train checkpoints)")
        p.add_argument("--checkpoint", help="LLaVA-Next checkpoint (overrides model.checkpoint)")
        if name == "recommend":
            p.add_argument("--table", help="item embedding table from lavic embed (not needed with stage2.use_images=false)")
        p.add_argument("--no-ray", action="store_true", help="run in this process (one GPU, or no Ray)")
        p.add_argument("--max-failures", type=int, default=0, help="Ray Train worker failures to retry from the last checkpoint")
        p.add_argument("--json", action="store_true")
        _config_args(p)
        p.set_defaults(fn=fn)

    for name, fn, what, out in (
        ("preprocess", cmd_preprocess, "decode, validate and tile every image into Parquet shards (Ray Data); fetches image "
         "URLs; bad images listed with their reason", "output directory (a rerun skips finished shards)"),
        ("describe", cmd_describe, "teacher descriptions from the full-token VLM (Ray Data actor pool)",
         "output directory (descriptions.parquet; a rerun skips done images)"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("--catalog", required=True, help="dataset root (item metadata; images/ or image URLs)")
        p.add_argument("--out", required=True, help=out)
        p.add_argument("--checkpoint", help="the checkpoint to use (default model.checkpoint)")
        p.add_argument("--no-ray", action="store_true", help="run in this process")
        p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
        _config_args(p)
        p.set_defaults(fn=fn)

    p = sub.add_parser("embed", help="the item embedding table: every item's 5 vectors, computed once (Ray Data)")
    p.add_argument("--catalog", required=True)
    p.add_argument("--out", required=True, help="the .parquet file to write")
    p.add_argument("--adapter", help="stage-1 adapter (omit: the undistilled vision side)")
    p.add_argument("--views", help="a lavic preprocess output directory: use its tiled views, decode no image")
    p.add_argument("--checkpoint")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--no-ray", action="store_true")
    _config_args(p)
    p.set_defaults(fn=cmd_embed)

    p = sub.add_parser("serve", help="serve the recommendation API (Ray Serve: retriever -> LaViC reranker)")
    p.add_argument("--serve-config", default="serve_configs/local.yaml", help="Serve config file (default serve_configs/local.yaml)")
    p.add_argument("--workdir", help="serve a quickstart work directory's artifacts (stage2/lavic, items/distilled.parquet, catalog)")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override an application arg, e.g. --arg retrieve_k=20 (repeatable)")
    p.add_argument("--host", help="HTTP host (default from the config: 127.0.0.1 locally)")
    p.add_argument("--port", type=int, help="HTTP port (default from the config)")
    p.add_argument("--address", help="a running Ray cluster ('auto'); default: start a local one")
    p.add_argument("--detach", action="store_true", help="return after deploying (with --address: it keeps serving)")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("quickstart", help="the main job on the embedded default: synthetic catalog -> ... -> report")
    p.add_argument("--workdir", default="lavic_runs/quickstart", help="where every artifact goes")
    p.add_argument("--json", action="store_true", help="last line printed: one JSON object of metrics per method")
    _config_args(p)
    p.set_defaults(fn=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.verbose:
        for noisy in ("sentence_transformers", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    from lavic_ray.config import ConfigError
    from lavic_ray.data.records import DataError

    try:
        return args.fn(args)
    except (ConfigError, DataError, FileNotFoundError, FileExistsError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"lavic {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

