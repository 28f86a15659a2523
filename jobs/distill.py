"""Stage 1: visual knowledge self-distillation on Ray Train (LoRA on the vision tower + projector). Submit: ray job submit --working-dir . -- python jobs/distill.py --config jobs/configs/distill_small.yaml"""
import pathlib, sys  # noqa: E401
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the job's working directory ships lavic_ray
from lavic_ray.jobs import main  # noqa: E402
if __name__ == "__main__": sys.exit(main("distill"))  # noqa: E701
