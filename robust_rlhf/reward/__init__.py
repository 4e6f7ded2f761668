"""The reward models: the BRME and the baselines' ensembles, their losses, aggregations, scoring and metrics (stage train_reward)."""
