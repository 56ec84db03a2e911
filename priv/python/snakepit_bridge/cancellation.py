"""Cancelling a tool call that is running: :class:`CallHandle`."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Type, TypeVar

from .errors import CANCELLED_BY_CALLER, ToolCancelled

if TYPE_CHECKING:  # pragma: no cover
    from ._native import InterruptSlot

__all__ = ["CallHandle"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

_call_ids = itertools.count(1)


_slot_class: Optional[Type[InterruptSlot]] = None


def _new_slot() -> InterruptSlot:
    # The compiled extension, imported on first use so that the rest of the
    # package works without it. Why the slot is native: see its docstring.
    global _slot_class
    if _slot_class is None:
        from ._native import InterruptSlot

        _slot_class = InterruptSlot
    return _slot_class(ToolCancelled)


class CallHandle:
    """Controls one tool call: its deadline, and cancelling it from any thread.

    Get one from :meth:`ToolDispatcher.new_call` and pass it as ``handle=`` to
    :meth:`ToolDispatcher.call` or :meth:`ToolDispatcher.open_stream`; one
    handle serves one call. The worker's gRPC server does this for every
    request, and calls :meth:`cancel` when the caller goes away or the
    deadline passes.

    What :meth:`cancel` does depends on where the call is:

    * running Python code in a thread (a sync tool, the sync part of any tool,
      a sync generator inside ``next()``): :class:`ToolCancelled` is raised in
      that thread at its next Python instruction. A blocking C call
      (``time.sleep``, a socket read, a long NumPy operation) finishes first;
      C code that never returns to the interpreter cannot be interrupted.
    * awaiting on the dispatcher's event loop (a coroutine, or an async
      generator's pending ``__anext__``): its task is cancelled, so the tool
      sees :class:`asyncio.CancelledError` at its current ``await``.
    * not started yet, or between two steps of a stream: the next step raises
      :class:`ToolCancelled` without running tool code.

    In every case the tool's ``finally`` blocks run (unless the tool swallows
    the exception). The call then raises :class:`ToolCancelled` with the
    reason given to :meth:`cancel`.

    Attributes:
        call_id: A process-unique number, for logs.
        deadline: ``time.monotonic()`` value at which the caller gives up, or
            ``None``. The handle does not enforce it: the gRPC server does, by
            calling :meth:`cancel`.
    """

    def __init__(self, timeout: Optional[float] = None, *, interruptible: bool = True) -> None:
        """Create a handle.

        Args:
            timeout: Seconds the caller allows from now, or ``None`` for no deadline.
            interruptible: Whether :meth:`cancel` may raise in a running
                thread. Without it (no compiled extension needed) a cancel only
                stops the call at its next step or ``await``.
        """
        self.call_id = next(_call_ids)
        self.deadline: Optional[float] = None if timeout is None else time.monotonic() + max(0.0, timeout)
        self._lock = threading.Lock()
        self._reason: Optional[str] = None
        self._done = False
        self._task: Optional[asyncio.Future[Any]] = None
        self._slot = _new_slot() if interruptible else None
        self._callbacks: List[Callable[[], None]] = []

    def __repr__(self) -> str:
        state = f"cancelled ({self._reason})" if self._reason else "done" if self._done else "active"
        return f"<CallHandle {self.call_id} {state}>"

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` took effect."""
        return self._reason is not None

    @property
    def reason(self) -> Optional[str]:
        """The reason given to the effective :meth:`cancel`, or ``None``."""
        return self._reason

    def time_remaining(self) -> Optional[float]:
        """Seconds left until :attr:`deadline` (never negative), or ``None`` without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def cancel(self, reason: str = CANCELLED_BY_CALLER) -> bool:
        """Stop the call; safe from any thread, at any time.

        Args:
            reason: Recorded in the :class:`ToolCancelled` the call raises,
                e.g. :data:`~snakepit_bridge.errors.DEADLINE_EXCEEDED`.

        Returns:
            ``True`` if this cancelled the call; ``False`` if it had already
            finished or been cancelled (then nothing happens: a late cancel
            never reaches code that runs after the call).
        """
        with self._lock:
            if self._reason is not None or self._done:
                return False
            self._reason = reason
            task = self._task
            callbacks, self._callbacks = self._callbacks, []
        if self._slot is not None:
            self._slot.interrupt()
        if task is not None:
            task.get_loop().call_soon_threadsafe(task.cancel)
        # Last: whatever they wake up finds the cancel recorded (and the
        # thread's interrupt scheduled), so it can tell it from a normal end.
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("error in a cancel callback of call %d", self.call_id)
        return True

    # -- used by the dispatcher --------------------------------------------

    def _error(self) -> ToolCancelled:
        return ToolCancelled(self._reason or "")

    def _run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in this thread so that :meth:`cancel` interrupts it.

        Raises:
            ToolCancelled: The call was cancelled before or while ``fn`` ran.
        """
        slot = self._slot
        if slot is None:
            if self._reason is not None:
                raise self._error()
            return fn(*args)
        result: T
        returned = False
        try:
            try:
                # The slot is entered before the tool runs and left after,
                # so a cancel either finds this thread registered (and
                # raises in it) or refuses the next enter().
                if not slot.enter():
                    raise self._error()
                result = fn(*args)
                returned = True
            finally:
                # Withdraws an exception scheduled but not delivered yet, so
                # none can land after this point.
                slot.exit()
        except ToolCancelled:
            if not returned:
                # Re-raise with the reason (an injected exception has none).
                raise self._error() from None
            # The cancel came just as fn returned and its exception landed
            # here, before exit(): fn did finish, so keep its result.
        return result

    def _start_task(self, task: asyncio.Future[Any]) -> bool:
        """Record the task running an async step; ``False`` if already cancelled."""
        with self._lock:
            if self._reason is not None:
                return False
            self._task = task
            return True

    def _end_task(self) -> None:
        with self._lock:
            self._task = None

    def _on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the call is cancelled: at once if it already was.

        It runs in the thread calling :meth:`cancel`, after the cancel is
        recorded and the interrupt and task cancel are under way. Used to wake
        a wait that an interrupt cannot reach (a thread blocked in native
        code, waiting for a duplex call's next input).
        """
        with self._lock:
            if self._reason is None:
                if not self._done:
                    self._callbacks.append(callback)
                return
        callback()

    def _settle_interrupt(self) -> None:
        """Withdraw the cancel's interrupt from this thread if it has not landed yet.

        For code that learned of the cancel another way (a wait that a
        :meth:`_on_cancel` callback woke up) and raises ``ToolCancelled``
        itself: the exception :meth:`cancel` scheduled in this thread must not
        land later, in the middle of the tool's cleanup. Does nothing in
        threads the cancel did not target.
        """
        slot = self._slot
        if slot is not None and slot.thread_id == threading.get_ident():
            slot.exit()

    def _finish(self) -> None:
        """Mark the call finished: later cancels do nothing."""
        with self._lock:
            self._done = True
            self._task = None
            self._callbacks = []
