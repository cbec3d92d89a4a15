"""Rewards: a trained PRM as the reward function of TRL's online RL trainers (`GRPOTrainer`, `RLOOTrainer`)."""

from .prm_reward import PRMReward

__all__ = ["PRMReward"]
