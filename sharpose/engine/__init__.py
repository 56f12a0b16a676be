"""What training and evaluation share: the run config, building its model and datasets, mixed precision
and the torchrun process group."""
