"""Serving a PRM to RL frameworks: `bis-prm serve` (OpenRLHF's `/get_reward`, step scores, `/health`), its batching
engine, the `RemoteScorer` client and the verl reward function. The modules import FastAPI only where the server
needs it: `bis_prm.serving.client` and `bis_prm.serving.verl_reward` work without it."""
