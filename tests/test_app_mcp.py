# ruff: noqa: F811 (the fixture imported from tests.test_app_server is an argument of the tests)
"""The lab over MCP: the launched app serves its API as MCP tools (gradio's mcp_server), and an MCP client (the
`mcp` package, as an assistant would use it) lists them and drives a job through start, status and compare."""

from __future__ import annotations

import ast
import time

import anyio
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.test_app_server import server  # noqa: F401 (fixture: the app launched on the tiny BLIP)

pytestmark = pytest.mark.slow

TOOLS = {"list_methods", "estimate", "start_job", "job_status", "compare", "which_method", "study_verdicts"}
ENDED = {"finished", "failed", "cancelled", "interrupted"}


async def drive(url: str) -> dict:
    """List the tools, then start a job, poll its status to the end and compare it on a test image."""
    seen: dict = {}
    async with streamable_http_client(f"{url}gradio_api/mcp/") as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()

            async def call(tool: str, **arguments) -> object:
                result = await session.call_tool(tool, arguments)
                text = result.content[0].text
                if result.isError:
                    return {"error": text}
                return ast.literal_eval(text)  # gradio returns the endpoint's value as its Python text

            seen["tools"] = {tool.name: tool for tool in (await session.list_tools()).tools}
            seen["methods"] = await call("list_methods")
            seen["choice"] = await call("which_method", task="vqa", data="300", params="18k")
            seen["bad"] = await call("which_method", task="vqa", data="lots", params="18k")
            job = await call(
                "start_job", task="caption", method="lora", budget="2k", max_steps=3, batch_size=4, eval_limit=2
            )
            seen["job"] = job
            deadline = time.monotonic() + 180
            status = await call("job_status", job_id=job["job_id"], log_lines=5)
            while status["state"] not in ENDED and time.monotonic() < deadline:
                await anyio.sleep(0.5)
                status = await call("job_status", job_id=job["job_id"], log_lines=5)
            seen["status"] = status
            seen["compare"] = await call("compare", task="caption", run_ids=[job["job_id"]], test_image=0)
    return seen


def test_an_mcp_client_lists_the_tools_and_runs_start_status_compare(server):
    seen = anyio.run(drive, server[1])

    tools = seen["tools"]
    assert TOOLS <= set(tools)
    assert not any(name.startswith("ui_") for name in tools)  # the page's own events are not tools
    start = tools["start_job"]
    assert "poll it with job_status" in start.description
    assert all(spec.get("description") for spec in start.inputSchema["properties"].values())  # every argument said
    assert tools["which_method"].inputSchema["required"] == ["task", "data", "params"]

    assert "lora" in {m["name"] for m in seen["methods"]}
    assert seen["choice"]["status"] == "interpolated" and seen["choice"]["sentence"].startswith("For 300 visual")
    assert seen["bad"]["error"].startswith("Data 'lots' is not understood")

    status = seen["status"]
    assert status["state"] == "finished", status["log_tail"]
    assert (status["step"], status["total_steps"]) == (3, 3) and "CIDEr-D" in status["metrics"]
    columns = seen["compare"]
    assert [c["method"] for c in columns] == ["zero-shot", "lora"]
    assert columns[1]["test_score"]["CIDEr-D"] == status["metrics"]["CIDEr-D"] and columns[1]["references"]
