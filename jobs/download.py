"""A hub checkpoint into the models volume, once (revision recorded, resumable). Submit: ray job submit -- python jobs/download.py --config jobs/configs/download_7b.yaml"""
import pathlib, sys  # noqa: E401
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the job's working directory ships lavic_ray
from lavic_ray.jobs import main  # noqa: E402
if __name__ == "__main__": sys.exit(main("download"))  # noqa: E701
