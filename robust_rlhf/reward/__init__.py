"""The reward models (stage train_reward): the BRME and the baselines' ensembles, their losses,
aggregations, scoring and metrics."""
