defmodule Snakepit.Test.Distribution do
  @moduledoc """
  Erlang distribution on this machine for the cluster tests and the bench's
  cross-node section: epmd (started only when none answers, and then
  stopped at the end), this node made distributed under a unique long name
  on 127.0.0.1 (the kernel picks the port), and peer nodes (`:peer`) running
  Snakepit with no pool but those started there.
  """

  alias Snakepit.Test.Wait

  @typedoc "What `stop/1` undoes."
  @type t :: %{epmd_started?: boolean(), distribution_started?: boolean()}

  @doc """
  Starts epmd if needed and distribution on this node, as `prefix_<n>`.

  Peers may come and go (be killed): `global` is restarted with
  `prevent_overlapping_partitions` off, else it would disconnect the next
  peers to "prevent overlapping partitions" (it reads the setting when it
  starts).
  """
  @spec start(String.t()) :: t()
  def start(prefix) do
    epmd_started? =
      if epmd_up?() do
        false
      else
        System.cmd("epmd", ["-daemon"], stderr_to_stdout: true)
        Wait.until(&epmd_up?/0, 5_000) || raise "epmd -daemon: epmd does not answer"
        true
      end

    distribution_started? =
      if Node.alive?() do
        false
      else
        Application.put_env(:kernel, :prevent_overlapping_partitions, false)
        :ok = :supervisor.terminate_child(:kernel_sup, :global_name_server)
        {:ok, _} = :supervisor.restart_child(:kernel_sup, :global_name_server)
        name = :"#{prefix}_#{System.unique_integer([:positive])}@127.0.0.1"
        {:ok, _} = :net_kernel.start([name, :longnames])
        true
      end

    %{epmd_started?: epmd_started?, distribution_started?: distribution_started?}
  end

  @doc """
  Stops distribution (if `start/1` started it) and epmd (if it started it,
  once no node is registered with it any more: `epmd -kill` refuses
  otherwise).
  """
  @spec stop(t()) :: :ok
  def stop(%{epmd_started?: epmd_started?, distribution_started?: distribution_started?}) do
    if distribution_started?, do: :net_kernel.stop()

    if epmd_started? do
      Wait.until(&epmd_empty?/0, 5_000)
      System.cmd("epmd", ["-kill"], stderr_to_stdout: true)
      Wait.until(fn -> not epmd_up?() end, 5_000) || IO.puts(:stderr, "epmd -kill: still up")
    end

    :ok
  end

  @doc """
  A peer node `prefix_<n>@127.0.0.1` with this node's code path, Snakepit
  started there with no pool of its own; `{peer, node}`.
  """
  @spec start_peer(String.t()) :: {pid(), node()}
  def start_peer(prefix) do
    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
    args = [~c"-kernel", ~c"prevent_overlapping_partitions", ~c"false" | paths]
    name = :"#{prefix}_#{System.unique_integer([:positive])}"

    {:ok, peer, node} =
      :peer.start(%{name: name, host: ~c"127.0.0.1", longnames: true, args: args})

    :ok = :erpc.call(node, Application, :load, [:snakepit])
    :ok = :erpc.call(node, Application, :put_env, [:snakepit, :pools, []])
    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:snakepit])
    {peer, node}
  end

  defp epmd_up?, do: match?({_, 0}, System.cmd("epmd", ["-names"], stderr_to_stdout: true))

  defp epmd_empty? do
    case System.cmd("epmd", ["-names"], stderr_to_stdout: true) do
      {out, 0} -> not String.contains?(out, "name ")
      _ -> true
    end
  end
end
