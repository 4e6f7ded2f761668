"""PPO on a robust reward (stage ppo): rollouts, GAE, the clipped losses, KL estimators, reward
normalisation, the run loop."""
