"""Where one attempt of a stage works and reports: handed to every `run_<stage>` beside its arguments.

None of it is part of the stage's fingerprint: it says where the output goes and where progress is logged,
not what is computed.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.core.mlflow_target import MlflowTarget


@dataclass(frozen=True)
class StageRun:
    stage: str  # the stage's name in the DAG (e.g. "finetune", "evaluate.gqa")
    out: str  # this attempt's output folder (committed as the stage's output when run_<stage> returns)
    storage: str  # the storage root: Ray Train and Tune runs live under it
    fingerprint: str
    attempt: str = ""  # this attempt's id: a resumed attempt keeps it, --force starts a new one
    mlflow: MlflowTarget | None = None
    output: str = ""  # where `out` is committed when run_<stage> returns ("": `out` itself)

    @property
    def committed(self) -> str:
        """The path this attempt's output has once committed: what a record that outlives the attempt names."""
        return self.output or self.out

    @property
    def run_name(self) -> str:
        """A name unique to this attempt (one Ray Train run each: a resume continues it, --force starts anew)."""
        return f"{self.stage}-{self.fingerprint}-{self.attempt}"
