"""The parts of ``benchmarks/gpu_check.py``, one module per part: ``training`` (1, the DR / plain /
online step through the trainer's ``build_run`` and ``train_step``), ``mfu`` (2), ``accumulation``
(3), ``teachers`` (4), ``dag`` (5); ``synthetic_shards`` writes every shard they read, ``common``
holds the paper run specs and device helpers they share, ``table`` the figures' table."""
