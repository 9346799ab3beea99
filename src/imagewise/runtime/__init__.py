"""The layer every stage shares: device and precision, threads, weights and checkpoint I/O,
logits over a loader, the TTA view mean, the run folder and its typed metadata (RunMeta)."""
