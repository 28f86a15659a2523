"""The whole chain on a model shaped like llava-v1.6-mistral-7b (336 px / patch 14 views, the real pinpoints,
image token 32000, a Mistral text model, a SentencePiece tokenizer): preprocess of 3-, 4- and 5-view images,
stage 1, the item table from the preprocessed views, stage 2 in lavic-ray's preset and in the paper's,
likelihood and generation evaluations, and a request through the Serve application."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from lavic_ray import workflow
from lavic_ray.config import load_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SIZES = [(336, 336), (336, 1008), (672, 672)]  # 3, 4 and 5 LLaVA-Next views at 336 px
ITEMS = 96


@pytest.fixture(scope="module")
def chain(tmp_path_factory, mistral_dir, sbert):
    from lavic_ray.config import SynthConfig
    from lavic_ray.data.synthetic import generate

    tmp = tmp_path_factory.mktemp("mistral_chain")
    root = tmp / "catalog"
    # a catalog of its own, half the shared one: every image is tiled into 336 px views here
    generate(SynthConfig(seed=7, items=ITEMS, conversations=60), root, retriever=sbert)
    for i, p in enumerate(sorted((root / "images").glob("*.jpg"))):
        Image.open(p).convert("RGB").resize(SIZES[i % 3]).save(p)
    common = [f"model.checkpoint={mistral_dir}", f"dataset.root={root}", f"storage_root={tmp / 'runs'}",
              "stage1.max_steps=2", "stage2.max_steps=2", "stage1.eval_limit=4", "stage2.eval_limit=4", "eval.limit=6",
              "stage1.engine.kind=torch", "stage2.engine.kind=torch", "stage1.engine.precision=fp32",
              "stage2.engine.precision=fp32", "stage1.log_every=1", "stage2.log_every=1"]
    ours = load_config(None, [*common, "stage2.formulation=pointwise", "stage2.negatives=2", "stage2.max_length=512",
                              "stage1.engine.micro_batch_size=2", "stage2.engine.micro_batch_size=2"])
    paper = load_config(REPO / "jobs" / "configs" / "paper.yaml", common)
    cfg, art = workflow.resolve(ours)
    return SimpleNamespace(tmp=tmp, root=root, ours=cfg, paper=workflow.resolve(paper)[0], art=art)


def test_preprocess_tiles_3_4_and_5_views(chain):
    m = workflow.preprocess(chain.ours, chain.art, use_ray=False)
    assert m["bad"] == 0 and {"3", "4", "5"} <= set(m["views_histogram"])


def test_stage1_and_the_item_table_from_the_preprocessed_views(chain):
    for name, cfg in (("ours", chain.ours), ("paper", chain.paper)):
        d = workflow.stage1(cfg, chain.art, out=chain.tmp / f"stage1_{name}", use_ray=False)
        assert (d / "adapter" / "adapter_config.json").is_file()
        views = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"views": str(chain.art.preprocessed)})})
        table = workflow.embed(views, chain.art, "distilled", out=chain.tmp / f"items_{name}.parquet",
                               adapter=d / "adapter", use_ray=False)
        from lavic_ray.model.table import VectorTable

        t = VectorTable.load(table)
        assert t.vectors.shape[1:] == (5, 64) and len(t) == ITEMS
    # the paper's vectors are not rescaled (lavic-ray's are, to the token-embedding norm): they differ
    a = VectorTable.load(chain.tmp / "items_ours.parquet").vectors
    b = VectorTable.load(chain.tmp / "items_paper.parquet").vectors
    assert not a.norm(dim=-1).std() > 1e-3 and b.norm(dim=-1).std() > 1e-3


@pytest.mark.parametrize("preset", ["ours", "paper"])
def test_stage2_and_both_evaluations(chain, preset):
    cfg = getattr(chain, preset)
    table = chain.tmp / f"items_{preset}.parquet"
    run = workflow.stage2(cfg, chain.art, "lavic", out=chain.tmp / f"stage2_{preset}", table=table, use_ray=False)
    methods = ["lavic", "lavic-generate"] if preset == "paper" else ["lavic"]
    res = workflow.evaluate_methods(cfg, chain.art, methods, {"lavic": run}, "test", out_dirs=False)
    assert res["lavic"]["valid_ratio"] == 1.0 and res["lavic"]["conversations"] == 6
    if preset == "paper":  # greedy generation parsed with the reference's regex: any prediction counts, valid or not
        g = res["lavic-generate"]
        assert 0.0 <= g["valid_ratio"] <= 1.0 and "hr@1_per_gt_item" in g
        history = json.loads((chain.tmp / "stage2_paper" / "adapter_step.json").read_text())
        assert history["kept"] == "last"


def test_a_request_through_the_serve_application(chain):
    from ray import serve
    from ray.serve.exceptions import RayServeException

    from lavic_ray.serve.app import build_app
    from lavic_ray.serve.reranker import Reranker
    from lavic_ray.serve.retriever import Retriever
    from lavic_ray.serve.schema import RecommendRequest, ServeArgs

    args = ServeArgs(stage2_dir=str(chain.tmp / "stage2_paper"), table=str(chain.tmp / "items_paper.parquet"),
                     catalog=str(chain.root), max_text_chars=4000)
    real = serve.get_replica_context

    def context():  # Ray 2.60's local testing mode sets no replica context, which @serve.batch reads
        try:
            return real()
        except RayServeException:
            return SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serve, "get_replica_context", context)
        handle = serve.run(build_app(args), _local_testing_mode=True, name="lavic-mistral-test")
        try:
            out = handle.recommend.remote(RecommendRequest(context="<submission>a teal mug with stripes?</submission>",
                                                           k=3)).result()
        finally:
            for dep, method in ((Reranker, "_rerank_batch"), (Retriever, "_search_batch")):
                getattr(dep.func_or_class, method).set_max_batch_size.__self__._queue = None
    assert out.retrieved and len(out.items) == 3 and out.formulation == "listwise"
