"""Shared plumbing every stage uses: typed configs, errors, atomic files, progress, run tracking, torch.distributed helpers."""
