"""Live audio through a duplex tool, from a program outside the pools.

    mix run examples/python_client/run.exs streaming_audio.py

Sends 50 frames of a 440 Hz sine (20 ms of 16-bit PCM at 16 kHz each, with a
rising volume) to the showcase tool ``frame_rms``, as a microphone would, and
prints each frame's level and its round trip as the levels come back.
"""

from __future__ import annotations

import asyncio
import math
import os
import struct
import time
from typing import AsyncIterator, Dict

from snakepit_bridge.client import SnakepitClient

RATE = 16_000
FRAME_SAMPLES = 320  # 20 ms
FRAMES = 50


def sine_frame(index: int) -> bytes:
    """One frame of a 440 Hz sine whose volume rises with ``index``."""
    volume = 1000 + 500 * index
    start = index * FRAME_SAMPLES
    samples = (
        int(volume * math.sin(2 * math.pi * 440 * (start + n) / RATE))
        for n in range(FRAME_SAMPLES)
    )
    return struct.pack(f"<{FRAME_SAMPLES}h", *samples)


async def main() -> None:
    sent: Dict[int, float] = {}

    async def microphone() -> AsyncIterator[bytes]:
        for index in range(FRAMES):
            sent[index] = time.perf_counter()
            yield sine_frame(index)

    async with SnakepitClient(
        os.environ["SNAKEPIT_ADDRESS"], token=os.environ["SNAKEPIT_TOKEN"]
    ) as client:
        round_trips = []
        async for chunk in client.duplex(
            "frame_rms", microphone(), {"sample_width": 2}
        ):
            if chunk.data is None:
                continue  # the node's final chunk
            index = chunk.data["frame"]
            round_trip = (time.perf_counter() - sent[index]) * 1000
            round_trips.append(round_trip)
            print(
                f"frame {index:2d}  rms {chunk.data['rms']:8.1f}  round trip {round_trip:.2f} ms"
            )
        round_trips.sort()
        print(
            f"{len(round_trips)} frames, median round trip {round_trips[len(round_trips) // 2]:.2f} ms"
        )


asyncio.run(main())
