"""`fiqa submit -- VERB ARGS`: run any fiqa verb as a Ray job on a running cluster.

The job goes through the Ray Jobs API of the cluster's dashboard (`--address`, default
RAY_ADDRESS). Run from a source tree, the tree is uploaded as the job's working directory
and the entrypoint is `python -m jobs.cli VERB ARGS`, so the cluster runs this code; run from
an installed fiqa (the Docker images), the entrypoint is the cluster's own `fiqa VERB ARGS`.
With token authentication on (RAY_AUTH_MODE=token), the client sends the token Ray finds:
RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import time
from pathlib import Path

from pydantic import Field, field_validator

from jobs import cli
from jobs.config import JobConfig, configure_verb
from pipeline.errors import FiqaError

# Never uploaded: environments, caches and outputs that are not the project.
EXCLUDES = [
    ".git",
    ".venv",
    "demo-output",
    "**/__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
]


class SubmitError(FiqaError, RuntimeError):
    """A job that could not be submitted, or did not succeed."""


def source_tree() -> Path | None:
    """The project's source tree this code runs from; None when fiqa is installed."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").exists() else None


class SubmitConfig(JobConfig):
    address: str | None = Field(
        None, description="Ray dashboard address, http://HOST:8265 (default: RAY_ADDRESS)"
    )
    working_dir: str | None = Field(
        None,
        description="folder uploaded as the job's working directory (default: this source "
        "tree; none when fiqa is installed)",
    )
    env: list[str] = Field([], description="NAME=VALUE settings of the job's environment")
    wait: bool = Field(
        True, description="follow the job's logs and exit non-zero unless it succeeds"
    )
    command: list[str] = Field(
        description="the fiqa verb and its arguments, after --", json_schema_extra={"cli": False}
    )

    @field_validator("env")
    @classmethod
    def assignments(cls, values: list[str]) -> list[str]:
        for value in values:
            if "=" not in value or value.startswith("="):
                raise ValueError(f"expected NAME=VALUE, got {value!r}")
        return values


def entrypoint(command: list[str], uploaded: bool) -> str:
    program = ["python", "-m", "jobs.cli"] if uploaded else ["fiqa"]
    return shlex.join(program + command)


def run(config: SubmitConfig) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    command = config.command[1:] if config.command[:1] == ["--"] else config.command
    if not command or command[0] == "submit":
        raise SubmitError("give the fiqa verb to run after --, e.g. fiqa submit -- score ...")
    cli.parse(command)  # a typo fails here, not minutes later on the cluster
    address = config.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SubmitError("no cluster: pass --address http://HOST:8265 or set RAY_ADDRESS")
    working_dir = config.working_dir or source_tree()
    runtime_env: dict = {"env_vars": dict(v.split("=", 1) for v in config.env)}
    if working_dir is not None:
        runtime_env.update(working_dir=str(working_dir), excludes=EXCLUDES)
    client = JobSubmissionClient(address)
    job_id = client.submit_job(
        entrypoint=entrypoint(command, working_dir is not None), runtime_env=runtime_env
    )
    print(f"submitted {job_id} to {address}: fiqa {shlex.join(command)}")
    if not config.wait:
        print(f"follow it with: ray job logs --address {address} --follow {job_id}")
        return 0
    asyncio.run(follow(client, job_id))
    info = client.get_job_info(job_id)
    while not info.status.is_terminal():  # the log stream can end just before the status
        time.sleep(1)
        info = client.get_job_info(job_id)
    print(f"job {job_id} {info.status.value}" + (f": {info.message}" if info.message else ""))
    return 0 if info.status == JobStatus.SUCCEEDED else 1


async def follow(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def configure(parser) -> None:
    configure_verb(
        parser,
        SubmitConfig,
        run,
        example="fiqa submit --address http://ray-head:8265 -- curate --config curate.yaml",
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, help="-- then the fiqa verb and its arguments"
    )
