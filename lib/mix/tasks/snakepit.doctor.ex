defmodule Mix.Tasks.Snakepit.Doctor do
  @shortdoc "Checks that this machine can run the configured pools"

  @moduledoc """
  Checks that this machine can run the project's Snakepit configuration,
  before a deploy or after an upgrade:

      mix snakepit.doctor

  One line per check, `ok` or `FAILED` with what to do about it:

    * the NIF loads (built by `mix compile`);
    * for each configured pool (`config :snakepit, pools: [...]`): its
      `python` runs and is Python 3.9 or newer, the bundled extension
      (`snakepit_bridge._native`) imports under it, and its adapter imports
      and serves: a worker of it is started and stopped;
    * a loopback TCP socket and (on Linux) an abstract Unix socket can be
      bound, as workers do;
    * the bridge's address, if fixed in `config :snakepit, :bridge`, is free.

  Exits with a non-zero status when a check fails. The pools are started one
  worker at a time under names of their own, and stopped.
  """

  use Mix.Task

  alias Snakepit.Pool.Config

  @requirements ["app.config"]
  @min_python {3, 9}
  @start_timeout 60_000

  @typedoc "A check's name, and `:ok` or `{:error, what, fix}`."
  @type result :: {String.t(), :ok | {:error, String.t(), String.t()}}

  @impl true
  def run(_args) do
    results = checks()

    for {name, outcome} <- results do
      case outcome do
        :ok ->
          Mix.shell().info("ok      #{name}")

        {:error, what, fix} ->
          Mix.shell().error("FAILED  #{name}: #{what}\n        fix: #{fix}")
      end
    end

    case Enum.count(results, &match?({_, {:error, _, _}}, &1)) do
      0 -> Mix.shell().info("\nAll #{length(results)} checks passed.")
      failed -> Mix.raise("snakepit.doctor: #{failed} of #{length(results)} checks failed")
    end
  end

  @doc false
  # Every check, in order (used by `run/1`, and by the tests).
  @spec checks() :: [result()]
  def checks do
    nif = {"the Snakepit NIF loads", check_nif()}
    bridge = check_bridge_address()

    pool_checks =
      case pool_configs() do
        {:ok, configs} -> Enum.flat_map(configs, &pool_checks/1)
        {:error, message} -> [{"the pools' configuration", {:error, message, fix_config()}}]
      end

    # Abstract Unix sockets are Linux's (transport: :unix needs them).
    unix = if :os.type() == {:unix, :linux}, do: [check_abstract_socket()], else: []
    [nif, check_tcp()] ++ unix ++ bridge ++ pool_checks
  end

  # -- the NIF and sockets --

  defp check_nif do
    if Snakepit.Native.loaded?(),
      do: :ok,
      else:
        {:error, "the native library is not loaded",
         "run `mix compile` (it builds the Rust workspace; cargo must be installed)"}
  end

  defp check_tcp do
    result =
      case :gen_tcp.listen(0, ip: {127, 0, 0, 1}) do
        {:ok, socket} ->
          :gen_tcp.close(socket)
          :ok

        {:error, reason} ->
          {:error, "cannot listen on 127.0.0.1: #{:inet.format_error(reason)}",
           "allow loopback TCP sockets (workers serve on 127.0.0.1)"}
      end

    {"a loopback TCP socket can be bound", result}
  end

  defp check_abstract_socket do
    name = "snakepit-doctor-#{System.unique_integer([:positive])}"

    result =
      case :gen_tcp.listen(0, ifaddr: {:local, <<0, name::binary>>}) do
        {:ok, socket} ->
          :gen_tcp.close(socket)
          :ok

        {:error, reason} ->
          {:error, "cannot bind an abstract Unix socket: #{:inet.format_error(reason)}",
           "use `transport: :tcp` (the default) for pools on this machine"}
      end

    {"an abstract Unix socket can be bound (transport: :unix)", result}
  end

  defp check_bridge_address do
    with opts when is_list(opts) <- Application.get_env(:snakepit, :bridge),
         address when is_binary(address) <- Keyword.get(opts, :address),
         [host, port] <- String.split(address, ":", parts: 2),
         {port, ""} when port > 0 <- Integer.parse(port),
         {:ok, ip} <- :inet.parse_address(String.to_charlist(host)) do
      [{"the bridge's address #{address} is free", listen_free(ip, port)}]
    else
      _ -> []
    end
  end

  defp listen_free(ip, port) do
    case :gen_tcp.listen(port, ip: ip, reuseaddr: true) do
      {:ok, socket} ->
        :gen_tcp.close(socket)
        :ok

      {:error, reason} ->
        {:error, "cannot listen on it: #{:inet.format_error(reason)}",
         "stop what uses it, or configure another address (`config :snakepit, :bridge, address: ...`)"}
    end
  end

  # -- pools --

  defp pool_configs do
    case Application.get_env(:snakepit, :pools, [[name: :default]]) do
      pools when is_list(pools) ->
        Enum.reduce_while(pools, {:ok, []}, fn opts, {:ok, acc} ->
          case Config.new(opts) do
            {:ok, config} -> {:cont, {:ok, acc ++ [config]}}
            {:error, error} -> {:halt, {:error, Exception.message(error)}}
          end
        end)

      other ->
        {:error, "config :snakepit, :pools must be a list, got: #{inspect(other)}"}
    end
  end

  defp fix_config, do: "see `h Snakepit.Pool.Config` for the options and their values"

  defp pool_checks(%Config{} = config) do
    pool = inspect(config.name)

    python =
      {"pool #{pool}: python #{inspect(config.python)} is Python 3.9+", check_python(config)}

    if match?({_, :ok}, python) do
      native = {"pool #{pool}: the bundled extension imports", check_extension(config)}
      adapter = {"pool #{pool}: adapter #{config.adapter} starts a worker", check_adapter(config)}
      [python, native, adapter]
    else
      [python]
    end
  end

  defp check_python(config) do
    code = "import sys; print('snakepit-python-version %d.%d' % sys.version_info[:2])"

    # Other output (a sitecustomize, a warning) may come with the version.
    with {:ok, out} <- python(config, code),
         [_, major, minor] <- Regex.run(~r/snakepit-python-version (\d+)\.(\d+)/, out) do
      if {String.to_integer(major), String.to_integer(minor)} >= @min_python,
        do: :ok,
        else:
          {:error, "it is Python #{major}.#{minor}",
           "install Python 3.9 or newer and set the pool's :python to it"}
    else
      nil ->
        {:error, "it did not tell its version",
         "set the pool's :python to a CPython 3.9+ interpreter"}

      {:error, message} ->
        {:error, message,
         "install Python 3.9+ or set the pool's :python to an interpreter (name on PATH or absolute path)"}
    end
  end

  defp check_extension(config) do
    case python(config, "import snakepit_bridge._native") do
      {:ok, _} ->
        :ok

      {:error, message} ->
        {:error, message,
         "run `mix compile`: it builds priv/python/snakepit_bridge/_native.abi3.so, " <>
           "for CPython 3.9 or newer on this platform"}
    end
  end

  defp python(config, code) do
    case System.find_executable(config.python) do
      nil ->
        {:error, "#{inspect(config.python)} is not an executable (nor on PATH)"}

      executable ->
        env = Snakepit.Python.worker_env(config.python_path, config.env)

        case System.cmd(executable, ["-c", code], env: env, stderr_to_stdout: true) do
          {out, 0} -> {:ok, out}
          {out, status} -> {:error, "exit status #{status}: #{last_line(out)}"}
        end
    end
  rescue
    error in ErlangError -> {:error, Exception.message(error)}
  end

  defp check_adapter(config) do
    with :ok <- ensure_started() do
      name = :"snakepit_doctor_#{System.unique_integer([:positive])}"
      opts = config |> Map.from_struct() |> Map.to_list()
      opts = Keyword.merge(opts, name: name, size: 1, start_timeout: @start_timeout)

      case start_and_stop(opts) do
        :ok ->
          :ok

        {:error, error} ->
          {:error, last_line(Exception.message(error)),
           "make the adapter importable: its module on the pool's :python_path, its imports installed"}
      end
    end
  end

  # In a process of its own: a pool that fails to start exits, and it is
  # linked to the process that starts it.
  defp start_and_stop(opts) do
    {_pid, monitor} =
      spawn_monitor(fn ->
        Process.flag(:trap_exit, true)

        case Snakepit.Pool.start_link(opts) do
          {:ok, pool} -> exit({:doctor, Snakepit.Pool.stop(pool)})
          {:error, error} -> exit({:doctor, {:error, error}})
        end
      end)

    receive do
      {:DOWN, ^monitor, :process, _, {:doctor, result}} -> result
      {:DOWN, ^monitor, :process, _, reason} -> {:error, %RuntimeError{message: inspect(reason)}}
    end
  end

  # Starts Snakepit without its configured pools (the checks start them, one
  # worker each), its bridge on a free port (the configured one is checked
  # above, and may be in use by the deployed node).
  defp ensure_started do
    if Process.whereis(Snakepit.Supervisor) do
      :ok
    else
      Application.put_env(:snakepit, :pools, [])
      bridge = Application.get_env(:snakepit, :bridge, [])
      Application.put_env(:snakepit, :bridge, Keyword.put(bridge, :address, "127.0.0.1:0"))

      case Application.ensure_all_started(:snakepit) do
        {:ok, _} ->
          :ok

        {:error, reason} ->
          {:error, "Snakepit did not start: #{inspect(reason, limit: 10)}",
           "fix the failures above, then run the doctor again"}
      end
    end
  end

  defp last_line(text) do
    text |> String.trim() |> String.split("\n") |> List.last() |> to_string()
  end
end
