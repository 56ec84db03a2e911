defmodule Snakepit.Session.Watch do
  @moduledoc """
  A running watch (`Snakepit.Session.watch/3`): match its messages on `ref`,
  stop it with `Snakepit.Session.unwatch/1`.
  """

  @type t :: %__MODULE__{
          ref: reference(),
          handle: reference() | {:relay, pid()},
          session_id: String.t()
        }

  defstruct [:ref, :handle, :session_id]

  defimpl Inspect do
    def inspect(watch, _opts),
      do: "#Snakepit.Session.Watch<#{watch.session_id} #{Kernel.inspect(watch.ref)}>"
  end
end
