"""What every stage runs on: DeepSpeed engines and ranks, the launcher, resume state, checkpoints,
atomic writes, metric files, guards."""
