"""Shared plumbing every stage uses: typed configs, errors, atomic files, typed JSON records, progress,
run tracking, torch.distributed helpers."""
