"""The item embedding table (Ray Data actor pool): distilled, or undistilled for job.variant=lavic-no-distill. Submit: ray job submit --working-dir . -- python jobs/embed.py --config jobs/configs/embed_small.yaml"""
import pathlib, sys  # noqa: E401
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the job's working directory ships lavic_ray
from lavic_ray.jobs import main  # noqa: E402
if __name__ == "__main__": sys.exit(main("embed"))  # noqa: E701
