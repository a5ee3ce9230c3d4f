"""The engine: plan, fingerprint, run and track a DAG of stages; the CLI; Ray Jobs submission.

It knows no pipeline: `pipelines/llava15.py` defines the one this project runs."""
