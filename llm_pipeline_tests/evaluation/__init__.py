"""Tests of the held-out evaluation library (llm_pipeline.evaluation)."""
