defmodule Snakepit.Worker do
  @moduledoc """
  A ready Python worker process, as a pool hands it out.

  The struct wraps the NIF resource that owns the OS process: when the last
  reference to it is gone, the worker's whole process group is killed.
  Inspecting it shows the id, OS pid and port, never the raw resource.
  """

  @enforce_keys [:id, :pool, :os_pid, :port, :resource]
  defstruct [:id, :pool, :os_pid, :port, :resource]

  @type t :: %__MODULE__{
          id: String.t(),
          pool: atom(),
          os_pid: pos_integer(),
          port: :inet.port_number(),
          resource: reference()
        }

  defimpl Inspect do
    def inspect(worker, _opts) do
      "#Snakepit.Worker<#{worker.id} pid=#{worker.os_pid} port=#{worker.port}>"
    end
  end
end
