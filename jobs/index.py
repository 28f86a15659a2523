"""The retrieval index the Serve configs load (retrieval/sbert under storage_root). Submit: ray job submit --working-dir . -- python jobs/index.py --config jobs/configs/index_small.yaml"""
import pathlib, sys  # noqa: E401
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the job's working directory ships lavic_ray
from lavic_ray.jobs import main  # noqa: E402
if __name__ == "__main__": sys.exit(main("index"))  # noqa: E701
