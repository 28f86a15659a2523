"""Every step in order (the quickstart chain on any preset), with a report. Submit: ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/pipeline_small.yaml"""
import pathlib, sys  # noqa: E401
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the job's working directory ships lavic_ray
from lavic_ray.jobs import main  # noqa: E402
if __name__ == "__main__": sys.exit(main("pipeline"))  # noqa: E701
