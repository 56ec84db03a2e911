defmodule Snakepit.ElixirTools do
  @moduledoc ~S"""
  Elixir functions that Python tools can call.

      Snakepit.ElixirTools.register("lookup_user", fn %{"id" => id} ->
        {:ok, %{"id" => id, "name" => "user #{id}"}}
      end, description: "Finds a user")

  and in a Python tool:

      user = self.session_context.call_elixir_tool("lookup_user", id=42)

  The function takes the keyword arguments as a map with string keys, or the
  arguments and a context map (`:session_id`, `:metadata`) when its arity is
  2. It returns `{:ok, result}`, `{:error, reason}` or a plain result; the
  result must be JSON-encodable. An `{:error, reason}`, a raise or an exit
  reaches Python as an `ElixirToolError` with the Elixir message. Each call
  runs in a task of its own under the application's `Task.Supervisor`
  (`Snakepit.ElixirTools.Supervisor`). The Python call's deadline bounds
  how long Python waits, not the task: a function that never returns keeps
  its task until the application stops.
  """

  alias Snakepit.{Error, Native}

  @table __MODULE__
  @supervisor Snakepit.ElixirTools.Supervisor
  @catalog {__MODULE__, :catalog}

  @typedoc "`fn args -> result end` or `fn args, context -> result end`."
  @type tool_fun :: (map() -> term()) | (map(), map() -> term())

  @doc """
  Registers (or replaces) tool `name`.

  Options: `:description` and `:parameters`, a list of `{name, type}` or
  `{name, type, required?}` shown to Python by `list_elixir_tools()`.
  """
  @spec register(String.t(), tool_fun(), keyword()) :: :ok | {:error, Error.t()}
  def register(name, fun, opts \\ [])

  def register(name, fun, opts)
      when is_binary(name) and name != "" and (is_function(fun, 1) or is_function(fun, 2)) do
    description = Keyword.get(opts, :description, "")
    parameters = Enum.map(Keyword.get(opts, :parameters, []), &parameter/1)
    :ets.insert(@table, {name, fun, description, parameters})
    publish()
  end

  def register(name, fun, _opts) do
    {:error,
     Error.new(
       :validation,
       "a tool needs a non-empty string name and a function of arity 1 or 2, got: " <>
         "#{inspect(name)}, #{inspect(fun)}",
       %{reason: :invalid_argument}
     )}
  end

  @doc "Removes tool `name`; `:ok` also when there was none."
  @spec unregister(String.t()) :: :ok
  def unregister(name) do
    :ets.delete(@table, name)
    publish()
  end

  @doc "The registered tools as `{name, description}`, sorted by name."
  @spec list() :: [{String.t(), String.t()}]
  def list do
    @table |> :ets.tab2list() |> Enum.map(fn {name, _, d, _} -> {name, d} end) |> Enum.sort()
  end

  defp parameter({name, type}), do: parameter({name, type, true})

  defp parameter({name, type, required}),
    do: {to_string(name), to_string(type), required == true}

  defp publish do
    tools =
      @table
      |> :ets.tab2list()
      |> Enum.map(fn {name, _fun, description, parameters} -> {name, description, parameters} end)

    Native.bridge_set_tools(catalog(), tools)
  end

  @doc false
  # Called by Snakepit.Application, whose process owns the table.
  def init_table do
    if :ets.whereis(@table) == :undefined do
      :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
    end

    # Tools are node-wide: every bridge offers the one catalogue.
    if :persistent_term.get(@catalog, nil) == nil,
      do: :persistent_term.put(@catalog, Native.bridge_tools_new())

    publish()
  end

  @doc false
  # The supervisor of the tool calls, a child of the application.
  def child_spec(_opts), do: Task.Supervisor.child_spec(name: @supervisor)

  @doc false
  # Runs one call from Python in a task of its own and answers the NIF.
  # The tools as the bridges offer them to Python (a NIF resource).
  def catalog, do: :persistent_term.get(@catalog)

  @doc false
  # Runs one call from Python in a process of its own and answers the NIF.
  def run(call, name, args, context) do
    case start_task(fn -> reply(call, outcome(name, args, context)) end) do
      {:ok, _pid} ->
        :ok

      {:error, reason} ->
        reply(call, {:error, "Unavailable", "the tool did not start: #{inspect(reason)}"})
    end
  end

  # The supervisor is gone only while the application stops.
  defp start_task(fun) do
    Task.Supervisor.start_child(@supervisor, fun)
  catch
    :exit, reason -> {:error, reason}
  end

  defp outcome(name, args, context) do
    case :ets.lookup(@table, name) do
      [{^name, fun, _, _}] -> invoke(fun, args, context)
      [] -> {:error, "NotFound", "no Elixir tool named #{inspect(name)}"}
    end
  end

  # The Python side may have given up (deadline, cancellation): nothing to do.
  defp reply(call, outcome) do
    case Native.bridge_tool_reply(call, outcome) do
      :ok -> :ok
      {:error, _message} -> :ok
    end
  end

  defp invoke(fun, args, context) do
    result = if is_function(fun, 2), do: fun.(args, context), else: fun.(args)

    case result do
      {:ok, value} ->
        {:ok, value}

      {:error, %{__exception__: true} = e} ->
        {:error, inspect(e.__struct__), Exception.message(e)}

      {:error, reason} when is_binary(reason) ->
        {:error, "Error", reason}

      {:error, reason} ->
        {:error, "Error", inspect(reason)}

      value ->
        {:ok, value}
    end
  rescue
    e -> {:error, inspect(e.__struct__), Exception.message(e)}
  catch
    kind, reason -> {:error, to_string(kind), Exception.format_banner(kind, reason)}
  end
end
