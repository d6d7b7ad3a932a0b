"""Training: the loop (engine), AdamW groups and schedule (optim), checkpoints, DDP/FSDP (distributed), EMA."""
