"""Python reacting to session variables as they change: watches, filters, debounce and the reactive helpers.

Run it against a node with

    mix run examples/reactive_node.exs

which starts the node, creates the session, runs this program with the
bridge's address and token in its environment, and writes the ``status``
variable from Elixir meanwhile. By hand, against any bridge:

    SNAKEPIT_BRIDGE_ADDRESS=127.0.0.1:40123 SNAKEPIT_TOKEN=... PYTHONPATH=priv/python \\
        python3 examples/reactive_example.py [session_id]

Every section is bounded in time; the whole run takes a few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any, List

from snakepit_bridge import SessionContext
from snakepit_bridge.reactive import ReactiveVariable, VariableGroup, watch_for_condition
from snakepit_bridge.session_context import AsyncSessionContext

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def say(text: str) -> None:
    print(text, flush=True)


async def sensor(session: AsyncSessionContext, name: str, values: List[float], every_s: float = 0.02) -> None:
    """A fake sensor: writes ``values`` to ``name`` one after the other."""
    for value in values:
        await session.set_variable(name, value)
        await asyncio.sleep(every_s)


async def basic_watching(session: AsyncSessionContext) -> None:
    say("\n=== Basic watching ===")
    writer = None
    async for update in session.watch_variables(["temperature"]):
        if update.is_initial:
            say(f"temperature is {update.value} C (version {update.version})")
            writer = asyncio.create_task(sensor(session, "temperature", [22.0, 26.0, 29.5, 31.0]))
            continue
        say(
            f"temperature {update.old_value} -> {update.value} C"
            f"  (change {update.change_magnitude:.1f}, by {update.source}, version {update.version})"
        )
        if update.value > 30:
            say("  WARNING: high temperature! (leaving the watch: break closes it on the node)")
            break
    if writer is not None:
        await writer


async def filtered_and_debounced(session: AsyncSessionContext) -> None:
    say("\n=== Filtered and debounced ===")

    def significant(name: str, old: Any, new: Any) -> bool:
        """Temperature moves under 0.5 C are noise."""
        if name == "temperature" and old is not None:
            return abs(new - old) >= 0.5
        return True

    # Noise of 0.1-0.2 C around a rising trend, then 25.0; written every 2 ms.
    burst = [20.1, 20.2, 20.1, 21.0, 21.1, 21.2, 22.0, 22.1, 21.9, 23.5, 23.6, 23.4, 25.0]
    delivered = 0
    await session.update_variables({"temperature": 20.0, "humidity": 50.0})
    async with session.watch_variables(
        ["temperature", "humidity"], filter_fn=significant, debounce_ms=100, include_initial=False
    ) as updates:
        await updates.wait_ready()  # the stream is up: no write below is missed
        writers = asyncio.gather(
            sensor(session, "temperature", burst, every_s=0.002),
            sensor(session, "humidity", [51.0, 52.0, 55.0], every_s=0.01),
        )
        async for update in updates:
            delivered += 1
            say(f"{update.variable_name}: {update.old_value} -> {update.value}")
            if update.variable_name == "temperature" and update.value == 25.0:
                break
        await writers
    say(f"{len(burst)} temperature and 3 humidity writes: {delivered} updates delivered, the last one final")


async def reactive_variable(session: AsyncSessionContext) -> None:
    say("\n=== Reactive variable ===")
    temperature = ReactiveVariable(session, "temperature")

    def on_change(old: Any, new: Any) -> None:
        say(f"temperature alert: {old} -> {new}")
        if new > 25:
            say("  turning on cooling...")

    temperature.on_change(on_change)
    await temperature.start()
    say(f"value now {temperature.value}")
    temperature.value = 22.5  # writes the session variable
    await temperature.flush()
    temperature.value = 27.0
    await temperature.flush()
    await temperature.aclose()


async def variable_group(session: AsyncSessionContext) -> None:
    say("\n=== Variable group ===")
    sensors = VariableGroup(session)
    sensors.add_variable("temperature", 20.0)
    sensors.add_variable("humidity", 50.0)
    sensors.add_variable("pressure", 1013.0)  # registered here: it did not exist yet

    def on_sensor_change(name: str, old: Any, new: Any) -> None:
        say(f"sensor {name}: {old} -> {new}")

    sensors.on_any_change(on_sensor_change)
    await sensors.start()
    say(f"group values: {sensors.values}")
    await sensors.update_many({"temperature": 24.0, "humidity": 60.0})  # atomic: both or neither
    say(f"after update_many: {sensors.values}")
    await sensors.aclose()


async def condition_watching(session: AsyncSessionContext) -> None:
    say("\n=== Condition watching ===")
    say("waiting for optimal conditions (20-25 C, 40-60 % humidity, pressure > 1000)...")
    await session.update_variables({"temperature": 31.0, "humidity": 70.0})
    adjuster = asyncio.create_task(
        sensor(session, "humidity", [65.0, 58.0], every_s=0.05)
    )
    cooler = asyncio.create_task(sensor(session, "temperature", [28.0, 24.0], every_s=0.05))
    values = await watch_for_condition(
        session,
        ["temperature", "humidity", "pressure"],
        lambda v: 20 <= v["temperature"] <= 25 and 40 <= v["humidity"] <= 60 and v["pressure"] > 1000,
        timeout=5.0,
    )
    await asyncio.gather(adjuster, cooler)
    say(f"optimal conditions reached: {values}")
    try:
        await watch_for_condition(session, ["temperature"], lambda v: v["temperature"] > 100, timeout=0.2)
    except asyncio.TimeoutError:
        say("temperature > 100 C: not within 0.2 s (asyncio.TimeoutError)")


async def error_recovery(session: AsyncSessionContext) -> None:
    say("\n=== Error recovery, and Elixir writing ===")
    errors: List[BaseException] = []

    def on_error(error: BaseException) -> None:
        errors.append(error)
        say(f"  on_error: {type(error).__name__}: {error}")

    calls = 0

    def picky(name: str, old: Any, new: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ValueError(f"the filter chokes on {new!r}")  # reported; the update still comes
        return True

    if (await session.list_variables("status")) == []:
        await session.set_variable("status", "online")
    seen_from_elixir = 0
    deadline = time.monotonic() + 3.0
    # reconnect=True: a broken stream is retried (backoff from reconnect_delay_ms, x2, at most
    # 10 attempts) and resynced without duplicates; each interruption goes to on_error first.
    watch = session.watch_variables(
        ["status"], filter_fn=picky, on_error=on_error, reconnect=True, reconnect_delay_ms=200
    )
    async with watch:
        while seen_from_elixir < 4:
            try:
                update = await asyncio.wait_for(watch.__anext__(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                say("  (nobody else writes 'status': run this through `mix run examples/reactive_node.exs`)")
                break
            say(f"status: {update.value!r} (by {update.source}, version {update.version})")
            if update.source == "elixir":
                seen_from_elixir += 1
    say(f"{seen_from_elixir} updates from Elixir, {len(errors)} error(s) reported, the watch went on")


async def main() -> None:
    session_id = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SNAKEPIT_SESSION_ID", "reactive_example")
    # Address and token come from SNAKEPIT_BRIDGE_ADDRESS / SNAKEPIT_TOKEN (as in a worker).
    async with SessionContext.connect(session_id=session_id) as session:
        say(f"connected to session {session.session_id!r}")
        # set_variable registers a missing variable (its type inferred from the value).
        await session.set_variable("temperature", 20.0)
        await session.set_variable("humidity", 50.0)

        await basic_watching(session)
        await filtered_and_debounced(session)
        await reactive_variable(session)
        await variable_group(session)
        await condition_watching(session)
        await error_recovery(session)
        say("\nReactive example done.")


if __name__ == "__main__":
    asyncio.run(main())
