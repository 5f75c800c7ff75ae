"""Prefect flows. The `train-dcgan` flow and its deployment come with their own issue."""
