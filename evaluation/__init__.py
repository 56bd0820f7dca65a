"""edgecloud.evaluation: offline quality work: the exact fast evaluation engine, the HumanEval sweep,
the sandbox for generated code, RouteLLM metrics, reward-data collection and reward-head training."""
