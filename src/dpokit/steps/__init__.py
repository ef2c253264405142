"""Step-level reasoning: step data, searches, step rewards and code execution."""
