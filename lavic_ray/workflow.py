"""The LaViC workflow, step by step, under one storage root.

Every way of running a step goes through here: the ``lavic`` subcommands, the
``ray job submit`` entry points (:mod:`lavic_ray.jobs`) and ``lavic quickstart``. Each step
reads and writes the artifact layout of :class:`lavic_ray.artifacts.Artifacts` (a command
may name an explicit output instead) and is skipped when its output is already complete,
so any step can be rerun, and an interrupted run picks up where it stopped (a half-done
Ray Train stage resumes from its last checkpoint).

Inputs are resolved from the configuration (:func:`resolve`): ``dataset.root`` names the
user's dataset (None: the synthetic catalog under the storage root) and ``model.checkpoint``
a hub name or path (``small`` / ``tiny``: the offline models, built under the storage root).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from lavic_ray import storage
from lavic_ray.artifacts import Artifacts, write_config
from lavic_ray.config import LavicConfig, LavicRun, config_to_yaml
from lavic_ray.data.dataset import Dataset
from lavic_ray.data.layout import image_dirs
from lavic_ray.errors import InputMissing, InvalidInput
from lavic_ray.variants import VARIANTS

log = logging.getLogger(__name__)

OFFLINE_MODELS = ("small", "tiny")
#: ``timed(label, fn, *args)``: how the quickstart times (and shows) a step; the default just calls it.
Timed = Callable[..., object]


def _call(label: str, fn, *a, **k):
    return fn(*a, **k)


def stage_done(stage_dir: Path) -> bool:
    """A stage directory holds its final adapter and history (written last), here or in the object store."""
    return storage.exists(Path(stage_dir) / "adapter" / "adapter_config.json") and storage.exists(Path(stage_dir) / "history.json")


def ensure_synthetic_catalog(cfg: LavicConfig, directory: Path) -> Path:
    """Synthesise the catalog into ``directory`` unless the same config already did."""
    from lavic_ray.data.synthetic import generate
    from lavic_ray.retrieval import make_retriever

    wanted = config_to_yaml(cfg.synth)
    directory = storage.fetch(directory)
    previous = directory / "config.yaml"
    if Dataset(directory, cfg.synth.domain).manifest.is_file() and previous.is_file() and previous.read_text() == wanted:
        log.info("reusing the synthetic catalog in %s", directory)
        return directory
    log.info("synthesising the catalog into %s", directory)
    generate(cfg.synth, directory, make_retriever("sbert", cfg.retrieval), force=True)
    storage.publish(directory)
    return directory


def dataset_root(cfg: LavicConfig, art: Artifacts, create: bool = False) -> Path:
    """The dataset: ``dataset.root``, or the synthetic catalog (made here when ``create``)."""
    if cfg.dataset.root:
        root = Path(cfg.dataset.root)
        if not root.is_dir():
            raise InputMissing(f"dataset.root {root} is not a directory")
        return root
    if create:
        return ensure_synthetic_catalog(cfg, art.catalog)
    if not Dataset(storage.fetch(art.catalog), cfg.synth.domain).has_items():
        raise InputMissing(f"no dataset: set dataset.root, or run the pipeline job first (it synthesises {art.catalog})")
    return art.catalog


def ensure_model(cfg: LavicConfig, art: Artifacts, catalog: Path, build: bool = True) -> str:
    """Resolve ``small`` / ``tiny`` to a checkpoint built under the storage root (built when ``build``)."""
    name = cfg.model.checkpoint
    if name not in OFFLINE_MODELS:
        return name
    out = art.model(name)
    if storage.exists(out / "config.json"):
        log.info("reusing the %s model in %s", name, out)
        return str(out)
    if not build:
        raise InputMissing(f"model.checkpoint={name}: {out} is not built yet (run the pipeline job, or lavic small-model)")
    log.info("building the %s model into %s", name, out)
    if name == "tiny":
        from lavic_ray.model.checkpoints import build_tiny

        build_tiny(out, seed=cfg.small_model.seed)
        storage.publish(out)
    else:
        import ray

        from lavic_ray.runtime import remote_call

        cpus = cfg.small_model.cpus or (max(1.0, ray.available_resources().get("CPU", 1.0)) if ray.is_initialized() else 1.0)
        from lavic_ray import console

        with console.get().watch(out / "progress.json", "small model"):
            remote_call(_build_small, catalog, out, num_cpus=cpus, **cfg.small_model.model_dump(exclude={"cpus"}))
    return str(out)


def _build_small(catalog: Path, out: Path, **kwargs) -> None:
    from lavic_ray.model.small import build_small_model

    build_small_model(storage.fetch(catalog), out, **kwargs)
    storage.publish(out)


def resolve(cfg: LavicConfig, build: bool = False) -> tuple[LavicConfig, Artifacts]:
    """The config with ``dataset.root`` and ``model.checkpoint`` pointing at real inputs.

    Without ``dataset.root`` the dataset is the synthetic catalog under the storage root, in
    the domain ``synth.domain``; ``build`` makes the catalog and the offline model when missing.
    """
    art = Artifacts(cfg.storage_root)
    root = dataset_root(cfg, art, create=build)
    domain = cfg.dataset.domain if cfg.dataset.root else cfg.synth.domain
    update: dict = {"root": str(root), "domain": domain}
    fetched = art.preprocessed / "images"
    if fetched.is_dir():  # images the preprocess job downloaded from the metadata's URLs: later steps look there too
        dirs = [str(d) for d in image_dirs(root, cfg.dataset.images_dir)]
        if str(fetched) not in dirs:
            update["images_dir"] = [*dirs, str(fetched)]
    cfg = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update=update)})
    checkpoint = ensure_model(cfg, art, root, build=build)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"checkpoint": checkpoint})}), art


def dataset(cfg: LavicConfig) -> Dataset:
    """The resolved configuration's dataset."""
    return Dataset.from_config(cfg.dataset)


# ---------------------------------------------------------------------------- steps


def preprocess(cfg: LavicConfig, art: Artifacts, out: Path | None = None, use_ray: bool = True) -> dict:
    """Decode, validate and tile every image into Parquet shards (resumable shard by shard)."""
    from lavic_ray.pipeline.preprocess import run_preprocess

    out = Path(out or art.preprocessed)
    return {"out": str(out), **run_preprocess(cfg, cfg.dataset.root, out, use_ray=use_ray)}


def describe(cfg: LavicConfig, art: Artifacts, out: Path | None = None, use_ray: bool = True) -> dict:
    """Teacher descriptions from the full-token VLM (skips described images)."""
    from lavic_ray.pipeline.describe import run_describe

    return run_describe(cfg, cfg.dataset.root, Path(out or art.descriptions), use_ray=use_ray)


def _build_index(cfg: LavicConfig, out: Path) -> dict:
    from lavic_ray.data.layout import Catalog
    from lavic_ray.retrieval import make_retriever

    catalog = Catalog.load(cfg.dataset.root, cfg.dataset.images_dir)
    make_retriever(INDEX_KIND, cfg.retrieval).index_items(list(catalog), cfg.retrieval.item_text).save(out)
    return {"index": str(out), "retriever": INDEX_KIND, "items": len(catalog)}


#: the retriever the Serve configs load from ``retrieval/<kind>`` (the paper's candidates come from SBERT)
INDEX_KIND = "sbert"


def index(cfg: LavicConfig, art: Artifacts) -> dict:
    """The retrieval index over the catalog that the Serve app loads (``retrieval/sbert``), built on a CPU worker
    (``placement.cpu_resource``); skipped when one built from the same catalog and retrieval settings is there."""
    from lavic_ray.retrieval.base import INDEX_META
    from lavic_ray.runtime import remote_call

    out = storage.fetch(art.index(INDEX_KIND))
    built_with = config_to_yaml(cfg.retrieval) + f"dataset_root: {cfg.dataset.root}\n"
    stamp = out / "built_with.yaml"
    if (out / INDEX_META).is_file() and stamp.is_file() and stamp.read_text() == built_with:
        log.info("reusing the %s index in %s", INDEX_KIND, out)
        return {"index": str(out), "retriever": INDEX_KIND, "reused": True}
    result = remote_call(_build_index, cfg, out, num_cpus=1, resources=cfg.placement.cpu_resources())
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(built_with)
    storage.publish(stamp)
    return result


def run_stage(stage: str, cfg: LavicConfig, out: Path, table: Path | None = None, use_ray: bool = True):
    """Train a stage into ``out`` on Ray Train (or in this process); returns its final metrics.
    The console follows the run's ``progress.json`` (written by its rank 0, wherever that runs)."""
    from lavic_ray import console
    from lavic_ray.train.run import run_local, run_ray

    label = "stage 1" if stage == "stage1" else f"stage 2 {out.name}"
    with console.get().watch(Path(out) / "progress.json", label):
        if use_ray:
            return run_ray(stage, cfg, out, table).metrics
        return run_local(stage, cfg, out, table)


def stage1(cfg: LavicConfig, art: Artifacts, out: Path | None = None, use_ray: bool = True) -> Path:
    """Stage 1 (skipped when done); returns the stage directory."""
    out = Path(out or art.stage1)
    if not stage_done(out):
        run_stage("stage1", cfg, out, use_ray=use_ray)
    return out


def embed(cfg: LavicConfig, art: Artifacts, which: str, out: Path | None = None, adapter: Path | None = None,
          use_ray: bool = True) -> Path:
    """An item embedding table (skipped when present): ``distilled`` (stage 1's adapter, or ``adapter``)
    or ``undistilled`` (the vision side before stage 1)."""
    from lavic_ray.pipeline.embed import run_embed

    out = Path(out or art.table(which))
    if storage.exists(out):
        return out
    if which == "distilled" and adapter is None:
        adapter = art.stage1 / "adapter"
        if not stage_done(art.stage1):
            raise InputMissing(f"the distilled table needs stage 1's adapter: {adapter} is missing (run jobs/distill.py)")
    return run_embed(cfg, out, adapter if which == "distilled" else None, use_ray=use_ray)


def variant(cfg: LavicConfig, art: Artifacts, name: str) -> tuple[LavicConfig, Path | None]:
    """The stage-2 config and table of a variant (:data:`lavic_ray.variants.VARIANTS`)."""
    if name not in VARIANTS:
        raise InvalidInput(f"unknown stage-2 variant {name!r}; choose one of {list(VARIANTS)}")
    v = VARIANTS[name]
    if not v.use_images:
        return cfg.model_copy(update={"stage2": cfg.stage2.model_copy(update={"use_images": False})}), None
    return cfg, art.table(v.table)


def stage2(cfg: LavicConfig, art: Artifacts, name: str, out: Path | None = None, table: Path | None = None,
           use_ray: bool = True) -> LavicRun:
    """Stage 2 of a variant (skipped when done); ``table`` overrides the variant's item embedding table, which is
    made first when missing (from stage 1's adapter, or the vision side before it)."""
    vcfg, default_table = variant(cfg, art, name)
    if table is None and default_table is not None and not storage.exists(default_table) and not stage_done(Path(out or art.stage2(name))):
        embed(cfg, art, VARIANTS[name].table)
    table = Path(table) if table is not None else default_table
    if not vcfg.stage2.use_images:
        table = None
    if table is not None and not storage.exists(table):
        raise InputMissing(f"stage 2 ({name}) reads {table}, which is missing (run jobs/embed.py or lavic embed)")
    d = Path(out or art.stage2(name))
    if not stage_done(d):
        run_stage("stage2", vcfg, d, table, use_ray=use_ray)
    return LavicRun(stage2_dir=str(d), table=str(table) if table else None)


def stage2_variants(cfg: LavicConfig, art: Artifacts, names=tuple(VARIANTS), timed: Timed = _call) -> dict[str, LavicRun]:
    """Stage 2 of several variants, ``job.concurrent_runs`` at a time (one Ray Train run each).

    The variants are independent runs. They train in waves of ``job.concurrent_runs``, the variants with item
    vectors (the longer prompts) first; how many fit is the cluster's business: Ray queues a run's workers until
    the autoscaler has added the nodes they ask for, so this never reads what the cluster holds (a GPU group may
    be at zero when the job starts). With ``stage2.elastic_threads`` (CPU runs on one machine) a last, smaller wave
    gets the idle CPUs shared out (more torch threads each), so no core idles: on the 2-core default two
    single-threaded runs side by side do 1.34x the work of one two-threaded run (bench/RESULTS.md), then the
    title-only run takes both cores. The settings that shape learning (micro-batch, steps, learning rate) are the
    same in any wave. Each run keeps its own checkpoints, so an interrupted set resumes run by run; every run of a
    wave finishes before the first error (if any) is raised.
    """
    from concurrent.futures import ThreadPoolExecutor

    todo = [n for n in names if not stage_done(art.stage2(n))]
    runs = {n: stage2(cfg, art, n) for n in names if n not in todo}
    lanes = max(1, min(len(todo), cfg.job.concurrent_runs))
    if lanes > 1:
        todo.sort(key=lambda n: not VARIANTS[n].use_images)  # the longer runs (with vectors) in the first wave
    waves = [todo[i: i + lanes] for i in range(0, len(todo), lanes)]
    if lanes > 1:
        log.info("stage 2: %d variants, %d at a time: %s", len(todo), lanes, " then ".join(" + ".join(w) for w in waves))
    for wave in waves:
        wcfg = _shared_out(cfg, wave, lanes)
        if len(wave) == 1:  # in this thread: Ray Train's Ctrl-C handler only installs in the main thread
            runs[wave[0]] = timed(f"stage 2 ({wave[0]})", stage2, wcfg, art, wave[0])
            continue
        errors = {}
        with ThreadPoolExecutor(max_workers=len(wave), thread_name_prefix="stage2") as pool:
            futures = {n: pool.submit(timed, f"stage 2 ({n})", stage2, wcfg, art, n) for n in wave}
            for n, f in futures.items():
                try:
                    runs[n] = f.result()
                except Exception as e:  # noqa: BLE001 - re-raised below, after the wave's other runs finished
                    log.error("stage 2 (%s) failed: %s", n, e)
                    errors[n] = e
        if errors:
            raise RuntimeError(f"stage 2 failed for {sorted(errors)}; the wave's other runs finished and are kept") from next(iter(errors.values()))
    return {n: runs[n] for n in names}


def _shared_out(cfg: LavicConfig, wave: list[str], lanes: int) -> LavicConfig:
    """``stage2.elastic_threads`` on one machine: a wave smaller than the others gets the machine's idle CPUs."""
    import ray

    s = cfg.stage2
    if len(wave) >= lanes or s.use_gpu or not s.elastic_threads or not ray.is_initialized():
        return cfg
    share = int(ray.cluster_resources().get("CPU", 0.0) / (len(wave) * s.num_workers))
    if share <= s.cpus_per_worker:
        return cfg
    log.info("stage 2: %s on %d CPUs per worker", " + ".join(wave), share)
    return cfg.model_copy(update={"stage2": s.model_copy(update={"cpus_per_worker": float(share)})})


def trained_runs(art: Artifacts) -> dict[str, LavicRun]:
    """Every stage-2 variant already trained under the storage root."""
    runs = {}
    for name, v in VARIANTS.items():
        if stage_done(art.stage2(name)):
            runs[name] = LavicRun(stage2_dir=str(art.stage2(name)), table=str(art.table(v.table)) if v.table else None)
    return runs


def evaluate_methods(cfg: LavicConfig, art: Artifacts, methods, runs: dict[str, LavicRun], split: str = "test",
                     timed: Timed = _call, out_dirs: bool = True) -> dict[str, dict]:
    """Every method on a split of the dataset; metrics, predictions and config under ``eval/<method>``."""
    from lavic_ray.eval.evaluate import evaluate
    from lavic_ray.eval.methods import EvalContext

    ecfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"runs": {**cfg.eval.runs, **runs}})})
    ds = dataset(cfg)
    convs = ds.conversations(split, (ecfg.eval.candidates_key,))
    ctx = EvalContext(ecfg, ds.catalog())
    results = {}
    for method in methods:
        results[method] = timed(f"evaluate {method}", evaluate, convs, method, ecfg.eval.candidates_key, ctx,
                                art.eval_dir(method) if out_dirs else None)
    if out_dirs:
        write_config(art.eval_dir(""), ecfg)
        storage.publish(art.eval_dir(""))
    return results
