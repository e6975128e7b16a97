"""Parity and property tests for llama-parity, plus helpers to check other implementations."""
