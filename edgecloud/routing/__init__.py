"""edgecloud.routing: the hybrid token router, its policies, SLM features, reward-head inference,
threshold calibration and the code-completion prompts (used by the edge node, the simulator's fleet
mode and the offline evaluation)."""
