"""Training SAEs and transcoders from one activation stream.

    config.py      TrainConfig (and EvalConfig, sweeps): what a run is
    run.py         train: a run end to end (stream, trainer, saved SAEs, evaluation, summary, W&B); make_store
    trainer.py     Trainer: every SAE's steps on one stream, on one or several processes
    schedule.py    the learning-rate factor per step, the geometric median b_dec may start from
    metrics.py     the training log: one row of metrics per logged step (history.json, W&B)
    checkpoint.py  saving and resuming a run's state (OUT/checkpoint)
    evaluation.py  held-out metrics: reconstruction, sparsity, the model's loss with an SAE spliced in
    summary.py     TrainingSummary: summary.json, typed (read_summary)
"""
