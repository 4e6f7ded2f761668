"""PPO on a robust reward: rollouts, GAE, the clipped losses, KL estimators, reward normalisation, the run loop (stage ppo)."""
