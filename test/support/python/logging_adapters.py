"""An adapter whose tools log through Python's ``logging`` and ``warnings``, for the Elixir tests."""

import logging
import warnings

from snakepit_bridge.base_adapter import BaseAdapter, tool

log = logging.getLogger("app.tools")


class LoggingAdapter(BaseAdapter):
    def __init__(self):
        super().__init__()
        log.info("adapter created")

    @tool(description="Log `message` at `level` (a logging level name), with a traceback if asked")
    def log_it(self, level: str, message: str, with_traceback: bool = False) -> bool:
        if with_traceback:
            try:
                1 / 0
            except ZeroDivisionError:
                log.log(getattr(logging, level), message, exc_info=True)
        else:
            log.log(getattr(logging, level), message)
        return True

    @tool(description="Warn with `message` through the warnings module")
    def warn(self, message: str) -> bool:
        warnings.warn(message, UserWarning)
        return True

    @tool(description="Log `count` warnings as fast as possible")
    def flood(self, count: int) -> int:
        for i in range(count):
            log.warning("record %d of a flood", i)
        return count

    @tool(description="The call's metadata, as the tool sees it")
    def context_metadata(self) -> dict:
        return self.session_context.metadata

    @tool(description="Print a plain line")
    def say(self, text: str) -> bool:
        print(text, flush=True)
        return True
