"""Training machinery: the LightningModules (:mod:`.lit_module`, :mod:`.baseline_module`),
reading them back (:mod:`.loading`), the Trainer and its plugins (:mod:`.runner`,
:mod:`.precision`, :mod:`.slurm`), callbacks, checkpoints, loggers, resuming and
learning-rate schedules."""
