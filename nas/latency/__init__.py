"""Latency models per target: measured tables, fitted models and their importers."""
