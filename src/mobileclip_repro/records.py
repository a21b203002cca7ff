"""The evaluation record format: what ``evaluate`` writes (one JSON file per checkpoint x
benchmark, or a failure record for a benchmark that could not be evaluated) and the report reads.
Each file names its schema, so a reader refuses a file of another kind or version."""

RECORD_SCHEMA = "mobileclip_repro/eval-record/1"
FAILURE_SCHEMA = "mobileclip_repro/eval-failure/1"  # a benchmark that failed to evaluate (evaluate --skip-failed-benchmarks)
REQUIRED_RECORD_KEYS = ("run", "epoch", "seen_samples", "dr", "model", "benchmark", "dataset", "task",
                        "metrics", "main_metric_name", "main_metric", "num_samples")
