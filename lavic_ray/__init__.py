"""lavic-ray: distributed training and serving of LaViC on Ray."""

__version__ = "0.1.0"
