"""The LaViC workflow, step by step, under one storage root.

Each step reads and writes the artifact layout of :class:`lavic_ray.artifacts.Artifacts`
and is skipped when its output is already complete, so any step can be rerun, and an
interrupted run picks up where it stopped (a half-done Ray Train stage resumes from its
last checkpoint). The ``ray job submit`` entry points (:mod:`lavic_ray.jobs`) run one
step each; the pipeline job and ``lavic quickstart`` run them all in order.

Inputs are resolved from the configuration: ``dataset.root`` names the user's dataset
(None: the synthetic catalog under the storage root) and ``model.checkpoint`` a hub name
or path (``small`` / ``tiny``: the offline models, built under the storage root).
"""

from __future__ import annotations

import logging
from pathlib import Path

from lavic_ray.artifacts import Artifacts, write_config
from lavic_ray.config import LavicConfig, LavicRun, config_to_yaml

log = logging.getLogger(__name__)

#: The paper's method and its ablations: stage-2 variant -> item embedding table it reads (None: title only).
VARIANTS: dict[str, str | None] = {"lavic": "distilled", "lavic-title-only": None, "lavic-no-distill": "undistilled"}
OFFLINE_MODELS = ("small", "tiny")


def stage_done(stage_dir: Path) -> bool:
    """A stage directory holds its final adapter and history (written last)."""
    return (stage_dir / "adapter" / "adapter_config.json").is_file() and (stage_dir / "history.json").is_file()


def ensure_synthetic_catalog(cfg: LavicConfig, directory: Path) -> Path:
    """Synthesise the catalog into ``directory`` unless the same config already did."""
    from lavic_ray.data.synthetic import MANIFEST_FILE, generate

    wanted = config_to_yaml(cfg.synth)
    previous = directory / "config.yaml"
    if (directory / MANIFEST_FILE).is_file() and previous.is_file() and previous.read_text() == wanted:
        log.info("reusing the synthetic catalog in %s", directory)
        return directory
    log.info("synthesising the catalog into %s", directory)
    generate(cfg.synth, directory, force=True)
    return directory


def dataset_root(cfg: LavicConfig, art: Artifacts, create: bool = False) -> Path:
    """The dataset: ``dataset.root``, or the synthetic catalog (made here when ``create``)."""
    if cfg.dataset.root:
        root = Path(cfg.dataset.root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset.root {root} is not a directory")
        return root
    if create:
        return ensure_synthetic_catalog(cfg, art.catalog)
    if not (art.catalog / "item2meta_train.json").is_file() and not (art.catalog / "item2meta_valid.jsonl").is_file():
        raise FileNotFoundError(f"no dataset: set dataset.root, or run the pipeline job first (it synthesises {art.catalog})")
    return art.catalog


def ensure_model(cfg: LavicConfig, art: Artifacts, catalog: Path, build: bool = True) -> str:
    """Resolve ``small`` / ``tiny`` to a checkpoint built under the storage root (built when ``build``)."""
    name = cfg.model.checkpoint
    if name not in OFFLINE_MODELS:
        return name
    out = art.model(name)
    if (out / "config.json").is_file():
        log.info("reusing the %s model in %s", name, out)
        return str(out)
    if not build:
        raise FileNotFoundError(f"model.checkpoint={name}: {out} is not built yet (run the pipeline job, or lavic small-model)")
    log.info("building the %s model into %s", name, out)
    if name == "tiny":
        from lavic_ray.model.checkpoints import build_tiny

        build_tiny(out, seed=cfg.stage1.seed)
    else:
        from lavic_ray.model.small import build_small_model

        build_small_model(catalog, out, seed=cfg.stage1.seed, **cfg.small_model.model_dump())
    return str(out)


def resolve(cfg: LavicConfig, build: bool = False) -> tuple[LavicConfig, Artifacts]:
    """The config with ``dataset.root`` and ``model.checkpoint`` pointing at real inputs."""
    art = Artifacts(cfg.storage_root)
    root = dataset_root(cfg, art, create=build)
    domain = cfg.dataset.domain if cfg.dataset.root else cfg.synth.domain
    cfg = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"root": str(root), "domain": domain})})
    checkpoint = ensure_model(cfg, art, root, build=build)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"checkpoint": checkpoint})}), art


def stage1(cfg: LavicConfig, art: Artifacts) -> Path:
    """Stage 1 on Ray Train (skipped when done); returns the stage directory."""
    from lavic_ray.train.run import run_ray

    if not stage_done(art.stage1):
        run_ray("stage1", cfg, cfg.dataset.root, art.stage1, max_failures=cfg.job.max_failures)
    return art.stage1


def embed(cfg: LavicConfig, art: Artifacts, which: str) -> Path:
    """The item embedding table ``distilled`` (stage-1 adapter) or ``undistilled`` (skipped when present)."""
    from lavic_ray.pipeline.embed import run_embed

    out = art.table(which)
    if out.is_file():
        return out
    adapter = None
    if which == "distilled":
        adapter = art.stage1 / "adapter"
        if not stage_done(art.stage1):
            raise FileNotFoundError(f"the distilled table needs stage 1's adapter: {adapter} is missing (run jobs/distill.py)")
    return run_embed(cfg, cfg.dataset.root, out, adapter)


def variant(cfg: LavicConfig, art: Artifacts, name: str) -> tuple[LavicConfig, Path | None]:
    """The stage-2 config and table of a variant (``lavic``, ``lavic-title-only``, ``lavic-no-distill``)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown stage-2 variant {name!r}; choose one of {list(VARIANTS)}")
    which = VARIANTS[name]
    if which is None:
        return cfg.model_copy(update={"stage2": cfg.stage2.model_copy(update={"use_images": False})}), None
    return cfg, art.table(which)


def stage2(cfg: LavicConfig, art: Artifacts, name: str) -> LavicRun:
    """Stage 2 of a variant on Ray Train (skipped when done)."""
    from lavic_ray.train.run import run_ray

    vcfg, table = variant(cfg, art, name)
    if table is not None and not table.is_file():
        raise FileNotFoundError(f"stage 2 ({name}) reads {table}, which is missing (run jobs/embed.py)")
    d = art.stage2(name)
    if not stage_done(d):
        run_ray("stage2", vcfg, cfg.dataset.root, d, table, max_failures=cfg.job.max_failures)
    return LavicRun(stage2_dir=str(d), table=str(table) if table else None)


def concurrent_runs(stage_cfg, total: dict[str, float]) -> int:
    """How many Ray Train runs of a stage fit on a cluster at once (``total``: ``ray.cluster_resources()``)."""
    key, need = stage_cfg.run_resources()
    return max(1, int(total.get(key, 0.0) / need + 1e-9))


def stage2_variants(cfg: LavicConfig, art: Artifacts, names=tuple(VARIANTS), timed=None) -> dict[str, LavicRun]:
    """Stage 2 of several variants, as many at once as the cluster holds (one Ray Train run each).

    The variants are independent runs. When one run takes a fraction of the cluster
    (``stage2.cpus_per_worker`` x ``num_workers``, or a GPU per worker), they train in waves
    of as many as fit, the variants with item vectors (the longer prompts) first; a last,
    smaller wave gets the idle CPUs shared out (more torch threads each), so no core idles.
    On the 2-core default: two single-threaded runs side by side do 1.34x the work of one
    two-threaded run (``bench/cpu_lanes.py``), then the title-only run takes both cores.
    The settings that shape learning (micro-batch, steps, learning rate) are the same in
    any wave. Each run keeps its own checkpoints, so an interrupted set resumes run by run;
    every run of a wave finishes before the first error (if any) is raised.
    """
    import ray
    from concurrent.futures import ThreadPoolExecutor

    todo = [n for n in names if not stage_done(art.stage2(n))]
    runs = {n: stage2(cfg, art, n) for n in names if n not in todo}
    total = ray.cluster_resources() if ray.is_initialized() else {}
    lanes = min(len(todo), concurrent_runs(cfg.stage2, total)) if todo and total else 1
    call = timed or (lambda label, fn, *a: fn(*a))
    if lanes > 1:
        todo.sort(key=lambda n: VARIANTS[n] is None)  # the longer runs (with vectors) in the first wave
    waves = [todo[i: i + lanes] for i in range(0, len(todo), lanes)]
    if lanes > 1:
        log.info("stage 2: %d variants, %d at a time: %s", len(todo), lanes, " then ".join(" + ".join(w) for w in waves))
    for wave in waves:
        wcfg = cfg
        if len(wave) < lanes and not cfg.stage2.use_gpu:  # a short last wave: share the idle CPUs out
            share = int(total.get("CPU", 0.0) / (len(wave) * cfg.stage2.num_workers))
            if share > cfg.stage2.cpus_per_worker:
                wcfg = cfg.model_copy(update={"stage2": cfg.stage2.model_copy(update={"cpus_per_worker": float(share)})})
                log.info("stage 2: %s on %d CPUs per worker", " + ".join(wave), share)
        if len(wave) == 1:  # in this thread: Ray Train's Ctrl-C handler only installs in the main thread
            runs[wave[0]] = call(f"stage 2 ({wave[0]})", stage2, wcfg, art, wave[0])
            continue
        errors = {}
        with ThreadPoolExecutor(max_workers=len(wave), thread_name_prefix="stage2") as pool:
            futures = {n: pool.submit(call, f"stage 2 ({n})", stage2, wcfg, art, n) for n in wave}
            for n, f in futures.items():
                try:
                    runs[n] = f.result()
                except Exception as e:  # noqa: BLE001 - re-raised below, after the wave's other runs finished
                    log.error("stage 2 (%s) failed: %s", n, e)
                    errors[n] = e
        if errors:
            raise RuntimeError(f"stage 2 failed for {sorted(errors)}; the wave's other runs finished and are kept") from next(iter(errors.values()))
    return {n: runs[n] for n in names}


def trained_runs(art: Artifacts) -> dict[str, LavicRun]:
    """Every stage-2 variant already trained under the storage root."""
    runs = {}
    for name, which in VARIANTS.items():
        if stage_done(art.stage2(name)):
            runs[name] = LavicRun(stage2_dir=str(art.stage2(name)), table=str(art.table(which)) if which else None)
    return runs


def evaluate_methods(cfg: LavicConfig, art: Artifacts, methods, runs: dict[str, LavicRun], split: str = "test",
                     timed=None) -> dict[str, dict]:
    """Every method on a split of the dataset; metrics, predictions and config under ``eval/<method>``."""
    from lavic_ray.data.layout import Catalog, read_conversations
    from lavic_ray.eval.evaluate import EvalContext, evaluate

    ecfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"runs": {**cfg.eval.runs, **runs}})})
    conv_file = Path(cfg.dataset.root) / cfg.dataset.domain / f"{split}.jsonl"
    convs = read_conversations(conv_file, candidate_keys=(ecfg.eval.candidates_key,))
    ctx = EvalContext(ecfg, Catalog.load(cfg.dataset.root))
    results = {}
    for method in methods:
        args = (convs, method, ecfg.eval.candidates_key, ctx, art.eval_dir(method))
        results[method] = timed(f"evaluate {method}", evaluate, *args) if timed else evaluate(*args)
    write_config(art.eval_dir(""), ecfg)
    return results
