"""Adapters whose tools use the session's variables and the Elixir tools, for the Elixir tests.

Each tool is a thin wrapper over ``self.session_context`` and returns
JSON-able results, so a test can drive the Python side of the bridge from
Elixir and check what it sees on both sides.
"""

from snakepit_bridge.base_adapter import BaseAdapter, tool


class SessionToolsAdapter(BaseAdapter):
    """Session variables and Elixir tools, seen from Python tool code."""

    @tool(description="Write a session variable; its new version")
    def set_var(self, name: str, value, expected_version: int = None, metadata: dict = None) -> dict:
        variable = self.session_context.set_variable(
            name, value, expected_version=expected_version, metadata=metadata
        )
        return {"version": variable.version}

    @tool(description="Read a session variable's value")
    def get_var(self, name: str):
        return self.session_context.get_variable(name)

    @tool(description="A session variable with its type, version, source and times")
    def var_info(self, name: str) -> dict:
        return self.session_context.get_variable_info(name).to_dict()

    @tool(description="Register a session variable")
    def register_var(self, name: str, type: str, value, constraints: dict = None) -> dict:
        return self.session_context.register_variable(name, type, value, constraints=constraints).to_dict()

    @tool(description="Write several variables atomically; name -> new version")
    def update_vars(self, values: dict, expected_versions: dict = None) -> dict:
        updated = self.session_context.update_variables(values, expected_versions=expected_versions)
        return {name: variable.version for name, variable in updated.items()}

    @tool(description="Several variables' values (missing ones left out)")
    def get_vars(self, names: list) -> dict:
        return self.session_context.get_variables(names)

    @tool(description="Names of the variables matching a pattern")
    def list_vars(self, pattern: str = "*") -> list:
        return [variable.name for variable in self.session_context.list_variables(pattern)]

    @tool(description="Delete a session variable")
    def delete_var(self, name: str) -> bool:
        self.session_context.delete_variable(name)
        return True

    @tool(description="Call an Elixir tool with keyword arguments; its result")
    def call_elixir(self, tool: str, args: dict = None, marker_path: str = ""):
        # marker_path: "stopped: <exception type>" is written there when the
        # call ends with an exception (a cancel reaching the tool).
        try:
            return self.session_context.call_elixir_tool(tool, **(args or {}))
        except BaseException as exc:
            if marker_path:
                with open(marker_path, "w") as marker:
                    marker.write(f"stopped: {type(exc).__name__}")
            raise

    @tool(description="The Elixir tools Python may call, by name")
    def elixir_tools(self) -> list:
        return [spec["name"] for spec in self.session_context.list_elixir_tools()]

    @tool(description="Write a session variable from async code; its new version")
    async def aset_var(self, name: str, value) -> dict:
        variable = await self.session_context.aio.set_variable(name, value)
        return {"version": variable.version}

    @tool(description="Read a session variable's value from async code")
    async def aget_var(self, name: str):
        return await self.session_context.aio.get_variable(name)

    @tool(description="Set a variable to 1, 2, ..., count in turn; the last version")
    def set_many_times(self, name: str, count: int) -> int:
        version = 0
        for n in range(1, count + 1):
            version = self.session_context.set_variable(name, n).version
        return version

    @tool(description="The error a variable operation raises, as data")
    def try_set_var(self, name: str, value, expected_version: int = None) -> dict:
        from snakepit_bridge.errors import BridgeError

        try:
            variable = self.session_context.set_variable(name, value, expected_version=expected_version)
            return {"ok": True, "version": variable.version}
        except BridgeError as exc:
            return {"ok": False, "error": type(exc).__name__, "reason": exc.reason, "message": exc.message}

    @tool(description="Yield each value of a variable as a watch here sees it, until it is `until`", supports_streaming=True)
    async def watch_var(self, name: str, until):
        async with self.session_context.aio.watch_variables([name]) as updates:
            async for update in updates:
                yield {"value": update.value, "initial": update.is_initial}
                if update.value == until:
                    return
