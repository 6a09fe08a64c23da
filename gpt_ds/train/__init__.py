"""Training: the engines, the loop, checkpoints, the schedule and the metrics of one pretraining run."""
