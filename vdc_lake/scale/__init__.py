"""Scale: the local process map, Ray tasks and the torchrun k-means."""
