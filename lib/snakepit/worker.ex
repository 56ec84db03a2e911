defmodule Snakepit.Worker do
  @moduledoc """
  A ready Python worker process, as a pool hands it out.

  The struct wraps the NIF resource that owns the OS process: when the last
  reference to it is gone, the worker's whole process group is killed.
  Inspecting it shows the id, OS pid and address, never the raw resource.
  """

  @enforce_keys [:id, :uid, :slot, :pool, :os_pid, :port, :address, :started_at, :resource]
  defstruct @enforce_keys

  @typedoc """
  `id` names the slot (`"pool-1"`) and stays the same across restarts; `uid`
  is unique to this OS process, so a restarted worker is a different worker.
  `address` is where it serves: `"127.0.0.1:<port>"`, or `"unix:@<name>"`
  with the `:unix` transport (`port` is `nil` then).
  """
  @type t :: %__MODULE__{
          id: String.t(),
          uid: pos_integer(),
          slot: non_neg_integer(),
          pool: atom(),
          os_pid: pos_integer(),
          port: :inet.port_number() | nil,
          address: String.t(),
          started_at: integer(),
          resource: reference()
        }

  defimpl Inspect do
    def inspect(worker, _opts) do
      "#Snakepit.Worker<#{worker.id} pid=#{worker.os_pid} #{worker.address}>"
    end
  end
end
