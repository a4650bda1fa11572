"""The result of `distill submit`: what happened, its exit code, and its JSON form.

Exit codes are the contract with CI pipelines:

| code | result | meaning |
|---|---|---|
| 0 | `passed` | the job succeeded and every gate passed (or it was submitted without --wait) |
| 1 | `failed`, `cancelled`, `error` | the job failed or was cancelled; or the service was unreachable or answered 5xx |
| 2 | `invalid` | the spec or the request was refused (bad field, missing file, bad key, 409) |
| 3 | `gate_failed` | the job succeeded but a quality gate failed |
| 4 | `timeout` | still running when --timeout ran out (it keeps running unless --cancel-on-timeout) |
"""  # noqa: E501

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from client.sdk import Job

EXIT_OK, EXIT_ERROR, EXIT_INVALID, EXIT_GATE, EXIT_TIMEOUT = 0, 1, 2, 3, 4

EXIT_CODES = {
    "passed": EXIT_OK,
    "submitted": EXIT_OK,
    "failed": EXIT_ERROR,
    "cancelled": EXIT_ERROR,
    "error": EXIT_ERROR,
    "invalid": EXIT_INVALID,
    "gate_failed": EXIT_GATE,
    "timeout": EXIT_TIMEOUT,
}


@dataclass
class Outcome:
    result: str  # a key of EXIT_CODES
    message: str
    job: Job | None = None
    gates: dict[str, Any] | None = None  # {"passed", "checks"} as judged by the client
    errors: list[str] = field(default_factory=list)  # "field: message" for invalid requests
    downloaded: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.result]

    def as_json(self, server: str) -> dict[str, Any]:
        """The single machine-readable object `distill submit --json` prints."""
        job = self.job
        out: dict[str, Any] = {
            "result": self.result,
            "exit_code": self.exit_code,
            "message": self.message,
            "errors": self.errors,
            "job": None,
            "evaluation": None,
            "gates": self.gates,
            "artifacts": [],
            "downloaded": self.downloaded,
            "elapsed_s": round(self.elapsed_s, 3),
        }
        if job is not None:
            out["job"] = {
                "id": job.id,
                "name": job.name,
                "status": job.status,
                "attempts": job.attempts,
                "error_code": job.error_code,
                "error_message": job.error_message,
                "replayed": job.replayed,
                "url": f"{server}/v1/jobs/{job.id}",
            }
            out["evaluation"] = job.data.get("evaluation")
            out["artifacts"] = [
                {
                    "format": a.format,
                    "sha256": a.sha256,
                    "size_bytes": a.size_bytes,
                    "url": f"{server}{a.download_url}",
                }
                for a in job.artifacts
            ]
        return out
