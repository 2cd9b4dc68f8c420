"""Talk to a running Dagster webserver (`dagster dev` or a deployment) over its GraphQL API.

Used by `llm-pipeline backfill --url ...`: the backfill is launched exactly as the UI's "Materialize → backfill"
does, so it appears in the UI's backfill list and is executed by the daemon in dependency order.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from llm_pipeline.stages import ORDER, STAGES

LAUNCH = """
mutation($p: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $p) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionSetNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
    ... on UnauthorizedError { message }
  }
}"""
STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numCancelable error { message } }
    ... on PythonError { message }
  }
}"""
DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


class WebserverError(RuntimeError):
    pass


def graphql(url: str, query: str, variables: dict[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/graphql", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            out = json.loads(resp.read())
    except OSError as exc:
        raise WebserverError(f"cannot reach the Dagster webserver at {url}: {exc}") from None
    if out.get("errors"):
        raise WebserverError("; ".join(e.get("message", str(e)) for e in out["errors"]))
    return out["data"]


def backfill_params(domains: list[str], assets: list[str] | None = None, title: str | None = None) -> dict[str, Any]:
    """The partitions of `domains` for the partitioned assets, plus every selected unpartitioned asset."""
    selected = assets or ORDER
    by_asset = []
    for name in ORDER:
        if name not in selected:
            continue
        if STAGES[name].partitioned:
            by_asset.append({"assetKey": {"path": [name]}, "partitions": {"ranges": [{"start": d, "end": d} for d in domains]}})
        else:
            by_asset.append({"assetKey": {"path": [name]}})
    params: dict[str, Any] = {"partitionsByAssets": by_asset, "tags": [{"key": "llm_pipeline/domains", "value": ",".join(domains)}]}
    if title:
        params["title"] = title
    return params


def launch_backfill(url: str, domains: list[str], assets: list[str] | None = None) -> str:
    out = graphql(url, LAUNCH, {"p": backfill_params(domains, assets, title=f"domains {', '.join(domains)}")})["launchPartitionBackfill"]
    if out["__typename"] != "LaunchBackfillSuccess":
        raise WebserverError(f"backfill not launched: {out}")
    return out["backfillId"]


def wait_backfill(url: str, backfill_id: str, timeout: float = 3600, poll: float = 2.0) -> str:
    deadline = time.time() + timeout
    status = "REQUESTED"
    while time.time() < deadline:
        out = graphql(url, STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if out["__typename"] != "PartitionBackfill":
            raise WebserverError(str(out))
        status = out["status"]
        if status in DONE:
            return status
        time.sleep(poll)
    raise WebserverError(f"backfill {backfill_id} still {status} after {timeout:.0f}s")
