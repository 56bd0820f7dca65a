"""Offline evaluation of hybrid routing: HumanEval problems, a sandbox for generated code, RouteLLM metrics."""
