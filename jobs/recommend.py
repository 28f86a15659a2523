"""Stage 2: recommendation fine-tuning on Ray Train (LoRA on the LLM) of job.variant. Submit: ray job submit --working-dir . -- python jobs/recommend.py --config jobs/configs/recommend_small.yaml"""
import pathlib, sys  # noqa: E401
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the job's working directory ships lavic_ray
from lavic_ray.jobs import main  # noqa: E402
if __name__ == "__main__": sys.exit(main("recommend"))  # noqa: E701
