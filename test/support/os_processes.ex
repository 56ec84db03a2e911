defmodule Snakepit.Test.OsProcesses do
  @moduledoc """
  Looks at OS processes from outside: which Python workers this VM started
  (found by the `SNAKEPIT_BEAM_PID` variable in their environment) and whether
  a pid is still alive.
  """

  @doc "OS pids of running worker processes started by this VM."
  @spec workers_of_this_vm() :: [pos_integer()]
  def workers_of_this_vm do
    marker = "SNAKEPIT_BEAM_PID=#{System.pid()}"

    for dir <- Path.wildcard("/proc/[0-9]*"),
        environ = read(Path.join(dir, "environ")),
        marker in String.split(environ, <<0>>),
        alive?(pid = String.to_integer(Path.basename(dir))) do
      pid
    end
  end

  @doc """
  Starts a separate VM (`elixir -e script`) with this project's code on its
  path, in a port that delivers its stdout as lines; returns the port and the
  VM's OS pid, to kill it from outside.
  """
  @spec start_vm(String.t()) :: {port(), pos_integer()}
  def start_vm(script) do
    ebin = Path.join(:code.lib_dir(:snakepit), "ebin")

    port =
      Port.open({:spawn_executable, System.find_executable("elixir")}, [
        :binary,
        :exit_status,
        {:line, 4096},
        args: ["-pa", ebin, "-e", script]
      ])

    {:os_pid, vm_pid} = Port.info(port, :os_pid)
    {port, vm_pid}
  end

  @doc "True while `pid` exists and is not a zombie."
  @spec alive?(pos_integer()) :: boolean()
  def alive?(pid) do
    case File.read("/proc/#{pid}/stat") do
      {:ok, stat} ->
        [_, after_name] = String.split(stat, ") ", parts: 2)
        not String.starts_with?(after_name, "Z")

      {:error, _} ->
        false
    end
  end

  defp read(path) do
    case File.read(path) do
      {:ok, data} -> data
      {:error, _} -> ""
    end
  end
end
