"""The data: the offline task and its gold scorer, preference pairs sampled or read from sources (stage prepare)."""
