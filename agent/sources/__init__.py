"""Inputs other than CAN that turn what they read into timestamped values for the pipeline."""
