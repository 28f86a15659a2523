"""Teacher descriptions from the full-token VLM (Ray Data actor pool); stage 1 reads them with dataset.descriptions. Submit: ray job submit --working-dir . -- python jobs/describe.py --config jobs/configs/describe_small.yaml"""
import pathlib, sys  # noqa: E401
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the job's working directory ships lavic_ray
from lavic_ray.jobs import main  # noqa: E402
if __name__ == "__main__": sys.exit(main("describe"))  # noqa: E701
