"""Serving PRMs: step scores over HTTP, for RL frameworks and for scale-out with vLLM."""
