"""Decode, validate and tile every image into Parquet shards (Ray Data); bad images listed with their reason. Submit: ray job submit --working-dir . -- python jobs/preprocess.py --config jobs/configs/preprocess_small.yaml"""
import pathlib, sys  # noqa: E401
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the job's working directory ships lavic_ray
from lavic_ray.jobs import main  # noqa: E402
if __name__ == "__main__": sys.exit(main("preprocess"))  # noqa: E701
