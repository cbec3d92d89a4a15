"""Model: a backbone becomes a step-level PRM (`modeling_prm`), rollouts become its inputs (`processing_prm`), and
`inference` scores the steps of rollouts."""
