"""A Ray Tune search over stage 1 or stage 2 (tune.*), each trial a Ray Train run; writes the best preset. Submit: ray job submit --working-dir . -- python jobs/tune.py --config jobs/configs/tune_small.yaml"""
import pathlib, sys  # noqa: E401
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the job's working directory ships lavic_ray
from lavic_ray.jobs import main  # noqa: E402
if __name__ == "__main__": sys.exit(main("tune"))  # noqa: E701
