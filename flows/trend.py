"""Results across runs: each comparison run records its results on the Prefect server, where
every worker and `gdflow runs` find them, and publishes the trend of its last runs."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pyarrow as pa
import pyarrow.parquet as pq
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterId,
    FlowRunFilterName,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import Artifact
from prefect.client.schemas.sorting import ArtifactSort
from prefect.runtime import deployment, flow_run
from pydantic import BaseModel

from tasks.data.dataset import DatasetRef
from tasks.digest import stable_digest
from tasks.errors import InputError
from tasks.params import PRESETS, RunParams
from tasks.report.sweep_tables import floor_loss
from tasks.report.tables import finite_or_none
from tasks.steps.reports import RunReport, publish_trend
from tasks.storage import atomic_path

RESULTS_KEY = "gd-results"  # the table artifact of each run's results
TREND_RUNS = 30  # runs a trend shows
MAX_RUNS = 200  # the most artifacts the server returns for one request
# The parameters that do not change a run's results: left out of its parameters' digest.
NOT_DIGESTED = {"data_dir", "refresh"}
# One row of `gdflow runs --parquet`: a run's facts, then one method's results.
ROW_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("run_name", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("deployment", pa.string()),
        ("preset", pa.string()),
        ("params_digest", pa.string()),
        ("method", pa.string()),
        ("lr", pa.float64()),
        ("final_loss", pa.float64()),
        ("excess_loss", pa.float64()),
        ("w", pa.float64()),
        ("b", pa.float64()),
        ("diverged", pa.bool_()),
        ("updates", pa.int64()),
        ("wall_time_s", pa.float64()),
    ]
)


class RunRecord(BaseModel):
    """One recorded comparison run: which run, its parameters, and its results per method."""

    id: str
    name: str
    time: datetime
    deployment: str | None
    preset: str
    params_digest: str
    params: dict[str, Any]
    methods: dict[str, dict[str, Any]]

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per method: the run's facts, then the method's results."""
        run = self.model_dump(exclude={"id", "name", "params", "methods"})
        return [
            {"run_id": self.id, "run_name": self.name, **run, "method": method, **result}
            for method, result in self.methods.items()
        ]


def trend_key(deployment_name: str | None, preset: str) -> str:
    """The trend artifact's key: one per deployment, or per preset for runs outside one."""
    name = deployment_name or f"preset-{preset}"
    return "gd-trend-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unnamed")


def record_results(dataset: DatasetRef, report: RunReport, params: RunParams) -> None:
    """Record this flow run's results on its server: a table artifact, the run's facts and its
    parameters (one JSON value each) in the artifact's metadata."""
    floor = floor_loss(dataset.stats())
    rows = [
        {
            "method": r.method,
            "lr": r.lr,
            "final_loss": finite_or_none(r.final_loss),
            "excess_loss": finite_or_none(r.final_loss - floor),
            "w": finite_or_none(r.final_w),
            "b": finite_or_none(r.final_b),
            "diverged": r.diverged,
            "updates": r.updates,
            "wall_time_s": r.wall_time_s,
        }
        for r in report.methods.values()
    ]
    values = params.model_dump(mode="json")
    digested = {k: v for k, v in values.items() if k not in NOT_DIGESTED}
    metadata = {"run_name": flow_run.name, "preset": params.preset}
    metadata["params_digest"] = stable_digest(digested)[:16]
    metadata |= {f"param.{k}": json.dumps(v) for k, v in values.items()}
    if deployment.name:
        metadata["deployment"] = deployment.name
    artifact = ArtifactCreate(
        key=RESULTS_KEY,
        type="table",
        data=json.dumps(rows),
        description="This run's results per method, for `gdflow runs` and the gd-trend artifact",
        metadata_=metadata,
        flow_run_id=UUID(flow_run.id),
    )
    with get_client(sync_client=True) as client:
        client.create_artifact(artifact)


def _json_value(text: str) -> Any:
    """A parameter's value from the artifact's metadata, where it is JSON text."""
    try:
        return json.loads(text)
    except ValueError:  # the server cuts values over 500 characters short
        return text


def _record(artifact: Artifact) -> RunRecord:
    meta = artifact.metadata_ or {}
    rows = json.loads(artifact.data)
    return RunRecord(
        id=str(artifact.flow_run_id),
        name=meta.get("run_name", ""),
        time=artifact.created,
        deployment=meta.get("deployment"),
        preset=meta.get("preset", ""),
        params_digest=meta.get("params_digest", ""),
        params={
            k.removeprefix("param."): _json_value(v)
            for k, v in meta.items()
            if k.startswith("param.")
        },
        methods={row.pop("method"): row for row in rows},
    )


def read_records(
    client: SyncPrefectClient, runs: FlowRunFilter | None, limit: int
) -> list[RunRecord]:
    """The recorded results of the last `limit` flow runs that match `runs`, newest first."""
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[RESULTS_KEY])),
        flow_run_filter=runs,
        sort=ArtifactSort.CREATED_DESC,
        limit=limit,
    )
    return [_record(artifact) for artifact in artifacts]


def publish_run_trend(dataset: DatasetRef, report: RunReport, params: RunParams) -> None:
    """Record this run's results, then publish the trend of the last runs of its deployment
    (or, outside one, of its preset), this one included."""
    record_results(dataset, report, params)
    if deployment.id:
        same = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]))
        subject = f"deployment {deployment.name}"
    else:
        same = FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(is_null_=True),
            tags=FlowRunFilterTags(all_=[f"preset:{params.preset}"]),
        )
        subject = f"preset {params.preset} (runs outside deployments)"
    with get_client(sync_client=True) as client:
        records = read_records(client, same, TREND_RUNS)
    rows = [row for record in reversed(records) for row in record.rows()]
    publish_trend(trend_key(deployment.name, params.preset), subject, rows)


def recent_runs(limit: int, preset: str | None, deployment_name: str | None) -> list[RunRecord]:
    """The last `limit` recorded runs, newest first, of a preset and/or a deployment if given."""
    if not 1 <= limit <= MAX_RUNS:
        raise InputError(f"--limit {limit} is out of range; give 1 to {MAX_RUNS}")
    if preset is not None and preset not in PRESETS:
        raise InputError(f"unknown --preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    tags = FlowRunFilterTags(all_=[f"preset:{preset}"]) if preset else None
    with get_client(sync_client=True) as client:
        ids = None
        if deployment_name is not None:
            names = DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name]))
            found = client.read_deployments(deployment_filter=names)
            if not found:
                raise InputError(
                    f"no deployment named {deployment_name!r} on the server; "
                    "list them with `prefect deployment ls`"
                )
            ids = FlowRunFilterDeploymentId(any_=[d.id for d in found])
        return read_records(client, FlowRunFilter(tags=tags, deployment_id=ids), limit)


def find_run(ref: str) -> RunRecord:
    """The recorded run whose id, id prefix (among the last MAX_RUNS runs) or name is `ref`."""
    try:
        wanted = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(ref)]))
    except ValueError:
        wanted = FlowRunFilter(name=FlowRunFilterName(any_=[ref]))
    with get_client(sync_client=True) as client:
        found = read_records(client, wanted, 2)
        if not found and re.fullmatch(r"[0-9a-f-]+", ref.lower()):
            recent = read_records(client, None, MAX_RUNS)
            found = [r for r in recent if r.id.startswith(ref.lower())]
    if not found:
        raise InputError(
            f"no recorded run has the id or name {ref!r}; list recent runs with `gdflow runs`"
        )
    if len(found) > 1:
        raise InputError(f"{ref!r} matches {len(found)} runs; give more of the id (`gdflow runs`)")
    return found[0]


def differing_params(a: RunRecord, b: RunRecord) -> list[str]:
    """The names of the parameters whose values differ between two runs, in a's order."""
    names = dict.fromkeys([*a.params, *b.params])
    return [name for name in names if a.params.get(name) != b.params.get(name)]


def write_rows(path: Path, records: list[RunRecord]) -> int:
    """Write one row per run and method to a Parquet file, atomically; return the row count."""
    if path.is_dir():  # an atomic write would replace it
        raise InputError(f"--parquet {path} is a directory; give a file path, e.g. runs.parquet")
    table = pa.Table.from_pylist([r for record in records for r in record.rows()], ROW_SCHEMA)
    try:
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
    except OSError as exc:
        raise InputError(
            f"cannot write --parquet {path} ({exc.strerror}); give another path"
        ) from None
    return table.num_rows
