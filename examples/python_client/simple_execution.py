"""A program outside the pools running tools on a Snakepit node.

    mix run examples/python_client/run.exs simple_execution.py

(run.exs starts the node and runs this script with SNAKEPIT_ADDRESS and
SNAKEPIT_TOKEN set; any program that knows both can do the same.)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

from snakepit_bridge.client import ErrorType, SnakepitClient, SnakepitError


async def main() -> None:
    async with SnakepitClient(
        os.environ["SNAKEPIT_ADDRESS"], token=os.environ["SNAKEPIT_TOKEN"]
    ) as client:
        version = await client.get_version()
        print(
            f"node protocol {version.protocol_version}, bridge {version.bridge_version}"
        )
        for pool in version.pools.values():
            streaming = sum(tool.supports_streaming for tool in pool.tools.values())
            print(
                f"pool {pool.name}: {pool.size} workers, {len(pool.tools)} tools ({streaming} streaming)"
            )

        result = await client.execute("add", {"a": 5, "b": 3})
        print(
            f"add(5, 3) = {result.value} on {result.worker_id} in {result.execution_time_ms} ms"
        )

        async for chunk in client.stream(
            "stream_progress", {"steps": 3, "delay_ms": 50}
        ):
            if chunk.is_final and chunk.data is None:
                print(
                    f"stream done on {chunk.metadata['worker_id']} in {chunk.metadata['execution_time_ms']} ms"
                )
            else:
                print(f"progress: {chunk.data}")

        try:
            await client.execute(
                "error_demo", {"error_type": "ValueError", "message": "bad input"}
            )
        except SnakepitError as error:
            assert error.error_type is ErrorType.PYTHON
            print(
                f"error branch: {error.error_type.value} {error.python_type}: {error.message}"
            )

        latencies = []
        for i in range(50):
            started = time.perf_counter()
            await client.execute("add", {"a": i, "b": 1})
            latencies.append((time.perf_counter() - started) * 1000)
        print(
            f"50 calls: p50 {statistics.median(latencies):.2f} ms, max {max(latencies):.2f} ms"
        )


asyncio.run(main())
