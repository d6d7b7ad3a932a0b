"""Training: the loop (engine), the tasks it runs (tasks/: classify, probe, mae, mim; the interface in
tasks/base.py), run config, defaults and their merge (config), AdamW groups and schedule (optim), checkpoints,
DDP/FSDP (distributed), EMA, the run directory (rundir)."""
