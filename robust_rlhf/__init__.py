"""robust-rlhf: reward-robust RLHF (BRME + PPO on a robust reward), as a DVC + DeepSpeed pipeline."""

__version__ = "0.1.0"
