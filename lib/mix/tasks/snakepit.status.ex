defmodule Mix.Tasks.Snakepit.Status do
  @shortdoc "Prints the pools, workers, queues and sessions of Snakepit"

  @moduledoc """
  Prints Snakepit's pools (workers with their OS pid, state, uptime,
  requests, calls in flight and memory; the queue), and how many sessions
  it holds (`Snakepit.Status`).

      mix snakepit.status                      # this project's configured pools, started for the task
      mix snakepit.status --node app@host1     # a running node

  With `--node`, the task connects to the node over Erlang distribution, as
  a hidden node, with the cookie of `--cookie`, else of the `RELEASE_COOKIE`
  environment variable, else `~/.erlang.cookie`; epmd must be running on
  this machine (`epmd -daemon`).
  """

  use Mix.Task

  @switches [node: :string, cookie: :string]

  @impl true
  def run(args) do
    case OptionParser.parse(args, strict: @switches) do
      {opts, [], []} ->
        opts |> collect() |> Snakepit.Status.format() |> Mix.shell().info()

      _ ->
        Mix.raise("usage: mix snakepit.status [--node NAME] [--cookie COOKIE]")
    end
  end

  defp collect(opts) do
    case Keyword.get(opts, :node) do
      nil ->
        Mix.Task.run("app.start")
        Snakepit.Status.collect()

      name ->
        node = String.to_atom(name)
        connect!(node, opts)
        remote_status(node)
    end
  end

  defp remote_status(node) do
    :erpc.call(node, Snakepit.Status, :collect, [], 15_000)
  catch
    # Not there, or an older Snakepit there: whatever went wrong, said plainly.
    kind, reason ->
      Mix.raise("cannot read the status of #{node}: #{Exception.format_banner(kind, reason)}")
  end

  defp connect!(node, opts) do
    unless Node.alive?() do
      names = if String.contains?(Atom.to_string(node), "."), do: :longnames, else: :shortnames
      host = node |> Atom.to_string() |> String.split("@") |> List.last()
      self_name = :"snakepit_status_#{System.unique_integer([:positive])}@#{host}"

      case :net_kernel.start([self_name, names]) do
        {:ok, _} ->
          :ok

        {:error, reason} ->
          Mix.raise("cannot start distribution: #{inspect(reason)} (is epmd running?)")
      end
    end

    if cookie = Keyword.get(opts, :cookie) || System.get_env("RELEASE_COOKIE"),
      do: Node.set_cookie(node, String.to_atom(cookie))

    # Hidden: the task does not join the node's cluster.
    unless node in Node.list(:connected) or :net_kernel.hidden_connect_node(node) == true do
      Mix.raise("cannot connect to #{node}: is it running, and is the cookie right?")
    end
  end
end
