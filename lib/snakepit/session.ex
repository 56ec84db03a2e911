defmodule Snakepit.Session do
  @moduledoc """
  Sessions and their typed, versioned variables, shared by Elixir and Python.

  The application's bridge (`Snakepit.Bridge`) owns the session store (inside
  the NIF); this module and its bridge server (which Python tools reach
  through `self.session_context`, and outside programs through
  `Snakepit.Bridge.address/0` and `token/0`) are two doors into it, so a
  value set here is what a Python tool reads next, and a value a Python tool
  sets reaches every watcher here.

  Pool calls with a session id (`Snakepit.execute_in_session/4`) use the same
  sessions: the first call creates the session, every call renews it, and
  when a session is deleted or expires the pools forget which worker served it.

  ## Sessions

  A session lives until deleted or until it has not been used for its time to
  live (`:ttl`, in seconds; default 3600, see `Snakepit.Bridge` for the node's
  limits). Every function naming a session renews it.

  ## Variables

  A variable has a name, a type, a value, constraints and metadata. Types and
  the constraints they accept:

  | type         | value                                          | constraints                              |
  |--------------|------------------------------------------------|------------------------------------------|
  | `:float`     | number                                         | `min`, `max`                             |
  | `:integer`   | integer                                        | `min`, `max`                             |
  | `:string`    | string                                         | `min_length`, `max_length`, `choices`    |
  | `:boolean`   | `true` / `false`                               | none                                     |
  | `:choice`    | one of `choices`                               | `choices` (required)                     |
  | `:module`    | string naming a module                         | `choices`                                |
  | `:embedding` | list of numbers                                | `dimensions`, `min`, `max`               |
  | `:tensor`    | `%{"shape" => [d, ...], "data" => [n, ...]}`   | `shape`                                  |
  | `:json`      | any JSON-encodable term                        | none                                     |

  Constraints are checked on registration and on every write; a write that
  breaks them changes nothing. Every write bumps the version by one and
  records who wrote it (`:elixir` here), the write's metadata and the time.

  ## Example

      iex> {:ok, _} = Snakepit.Session.create("doc_session")
      iex> {:ok, var} = Snakepit.Session.register_variable("doc_session", "temperature", :float, 0.7,
      ...>   constraints: %{min: 0.0, max: 2.0})
      iex> var.version
      1
      iex> {:ok, var} = Snakepit.Session.set_variable("doc_session", "temperature", 1.2)
      iex> {var.value, var.version}
      {1.2, 2}
      iex> {:error, error} = Snakepit.Session.set_variable("doc_session", "temperature", 3.0)
      iex> error.details.reason
      :invalid_value
      iex> Snakepit.Session.delete("doc_session")
      :ok

  ## Watching

  `watch/3` sends the watching process
  `{:snakepit_variable, ref, %Snakepit.Session.Update{}}` for every change of
  the watched variables, whoever made it, in version order per variable; and
  `{:snakepit_watch_ended, ref, reason}` if the watch ends on its own
  (`:deleted` or `:expired` with its session, `:overflow` when the watcher
  falls too far behind). The watch stops when the process exits or calls
  `unwatch/1`.

  ### A watcher that does not keep up

  A watch has a buffer of `buffer` updates (the `:buffer` option of
  `watch/3`, by default the node's `watch_buffer`, 1 024; see
  `Snakepit.Bridge`), the same rule as for Python's watch streams:

    * at most `buffer` of the watch's updates wait unread in the mailbox: the
      node hands over the next update only while the watcher has read enough
      (it counts the whole mailbox with `Process.info(pid, :message_queue_len)`,
      so other waiting messages count too);
    * the updates that cannot go yet wait in the store, up to `buffer` more;
    * when those are full too, the watch ends: the updates still waiting in
      the store are dropped, and the watcher's next message after those already
      in its mailbox is `{:snakepit_watch_ended, ref, :overflow}`. Watch again
      (with `include_initial: true`) to resume from the current values.

  So a process that stops reading holds at most about `2 * buffer` updates
  (about 10 KiB each for a small value), however many writes follow; a
  reader that keeps up sees every update. Once the mailbox is full, the
  node asks again after a pause (1 ms, doubling up to 64 ms), so a watcher
  that has just caught up may get the next update that much later.

  ## Several nodes

  On connected nodes a session lives in one node's store, its owner's:
  these functions act on that store from any node (a watch from another
  node gets its messages through a relay on the owner, with the same
  buffer rule). A session nobody holds yet is created on the calling node by
  `create/2`; a pool call places a new session itself (see the README's
  "Several nodes"). `list/0` lists the sessions this node owns. A session
  goes with its owner node: a function running when the node goes down
  fails with a `:transport` error whose `details.reason` is `:node_down`,
  and later ones find no such session (`:session_not_found`).

  ## Errors

  Failures are `{:error, %Snakepit.Error{category: :validation}}` whose
  `details.reason` says what happened: `:session_not_found`,
  `:variable_not_found`, `:variable_exists`, `:version_conflict`,
  `:invalid_value`, `:invalid_type`, `:invalid_constraints`,
  `:invalid_argument`, `:session_quota_exceeded` or `:variable_quota_exceeded`.
  """

  alias Snakepit.{Bridge, Error, Native}
  alias Snakepit.Cluster.{Route, Sessions, WatchRelay}
  alias Snakepit.Session.{Info, Variable, Watch}
  import Bitwise, only: [<<<: 2]

  @type session_id :: String.t()
  @type identifier_ :: String.t() | atom()

  @reasons ~w(session_not_found variable_not_found variable_exists version_conflict
              invalid_value invalid_type invalid_constraints invalid_argument
              session_quota_exceeded variable_quota_exceeded)a
           |> Map.new(&{Atom.to_string(&1), &1})

  @owner_side :snakepit_session_owner_side

  @types ~w(float integer string boolean choice module embedding tensor json)a

  # -- sessions ---------------------------------------------------------------

  @doc """
  Creates session `id` (or returns it, renewed, if it exists). With `nil` the
  node picks an id.

  Options: `:ttl` (seconds of disuse before it expires; the node's default
  otherwise) and `:metadata` (a map of strings, kept with a new session).
  """
  @spec create(session_id() | nil, keyword()) :: {:ok, Info.t()} | {:error, Error.t()}
  def create(id \\ nil, opts \\ [])

  def create(id, opts) when is_binary(id),
    do: at_owner(id, :create, [id, opts], fn -> create_here(id, opts) end)

  def create(id, opts), do: create_here(id, opts)

  defp create_here(id, opts) do
    with {:ok, id} <- optional_id(id),
         :ok <- keyword(opts),
         {:ok, ttl} <- ttl_option(opts),
         {:ok, metadata} <- string_map(Keyword.get(opts, :metadata, %{}), :metadata) do
      store!() |> Native.session_create(id, ttl, metadata) |> result() |> announce()
    end
  end

  @doc "The session's current state; renews it."
  @spec get(session_id()) :: {:ok, Info.t()} | {:error, Error.t()}
  def get(id), do: touch(id)

  @doc "Renews the session's time to live; returns its state."
  @spec touch(session_id()) :: {:ok, Info.t()} | {:error, Error.t()}
  def touch(id) do
    at_owner(id, :touch, [id], fn ->
      with {:ok, id} <- session_id(id), do: store!() |> Native.session_touch(id) |> result()
    end)
  end

  @doc """
  Deletes the session and its variables; its watchers get
  `{:snakepit_watch_ended, ref, :deleted}`. Deleting an unknown session is `:ok`.
  """
  @spec delete(session_id()) :: :ok | {:error, Error.t()}
  def delete(id) do
    at_owner(id, :delete, [id], fn ->
      with {:ok, id} <- session_id(id) do
        _existed = Native.session_delete(store!(), id)
        :ok
      end
    end)
  after
    if is_binary(id), do: Sessions.forget(id)
  end

  @doc "Every live session whose owner is this node, sorted by id."
  @spec list() :: [Info.t()]
  def list, do: Native.session_list(store!())

  @doc false
  # Used by pool calls with a session id: creates or renews the session.
  @spec ensure(session_id()) :: :ok | {:error, Error.t()}
  def ensure(id) do
    case store!() |> Native.session_create(id, 0, %{}) |> result() |> announce() do
      {:ok, _info} -> :ok
      error -> error
    end
  end

  # A session just created (never used since) is a telemetry event.
  defp announce({:ok, %Info{created_at: at, last_used_at: at} = info} = created) do
    Snakepit.Telemetry.execute(
      [:snakepit, :session, :created],
      %{system_time: System.system_time()},
      %{session_id: info.id, node: node()}
    )

    created
  end

  defp announce(other), do: other

  # -- variables --------------------------------------------------------------

  @doc """
  Registers variable `name` of `type` with an initial `value`.

  Options: `:constraints` (a map, see the table above) and `:metadata` (a map
  of strings). Fails with `:variable_exists` if the name is taken.
  """
  @spec register_variable(session_id(), identifier_(), Variable.var_type(), term(), keyword()) ::
          {:ok, Variable.t()} | {:error, Error.t()}
  def register_variable(session, name, type, value, opts \\ []) do
    at_owner(session, :register_variable, [session, name, type, value, opts], fn ->
      register_here(session, name, type, value, opts)
    end)
  end

  defp register_here(session, name, type, value, opts) do
    with :ok <- keyword(opts),
         {:ok, session} <- session_id(session),
         {:ok, name} <- identifier(name),
         {:ok, type} <- type(type),
         {:ok, metadata} <- string_map(Keyword.get(opts, :metadata, %{}), :metadata) do
      registration = %{
        name: name,
        var_type: type,
        value: value,
        constraints: Keyword.get(opts, :constraints, %{}),
        metadata: metadata
      }

      store!() |> Native.var_register(session, registration) |> result()
    end
  end

  @doc "The variable named (or with id) `identifier`."
  @spec get_variable(session_id(), identifier_()) :: {:ok, Variable.t()} | {:error, Error.t()}
  def get_variable(session, identifier) do
    at_owner(session, :get_variable, [session, identifier], fn ->
      with {:ok, session} <- session_id(session),
           {:ok, identifier} <- identifier(identifier) do
        store!() |> Native.var_get(session, identifier) |> result()
      end
    end)
  end

  @doc """
  Several variables at once, as a map from each identifier asked to its
  variable; identifiers that name no variable are left out.
  """
  @spec get_variables(session_id(), [identifier_()]) ::
          {:ok, %{String.t() => Variable.t()}} | {:error, Error.t()}
  def get_variables(session, identifiers) when is_list(identifiers) do
    at_owner(session, :get_variables, [session, identifiers], fn ->
      get_many_here(session, identifiers)
    end)
  end

  def get_variables(_session, other),
    do: invalid("identifiers must be a list, got: #{inspect(other)}")

  defp get_many_here(session, identifiers) do
    with {:ok, session} <- session_id(session),
         {:ok, identifiers} <- identifiers(identifiers),
         {:ok, {found, _missing}} <-
           store!() |> Native.var_get_many(session, identifiers) |> result() do
      by_identifier =
        for ident <- identifiers,
            var = Enum.find(found, &(&1.id == ident or &1.name == ident)),
            into: %{},
            do: {ident, var}

      {:ok, by_identifier}
    end
  end

  @doc """
  Writes `value` to a variable.

  Options: `:expected_version` (write only if the variable is still at that
  version, else `:version_conflict` and nothing is written) and `:metadata`
  (a map of strings recorded with the write and sent to watchers).
  """
  @spec set_variable(session_id(), identifier_(), term(), keyword()) ::
          {:ok, Variable.t()} | {:error, Error.t()}
  def set_variable(session, identifier, value, opts \\ []) do
    at_owner(session, :set_variable, [session, identifier, value, opts], fn ->
      with :ok <- keyword(opts),
           {:ok, session} <- session_id(session),
           {:ok, write} <- write({identifier, value, opts}),
           {:ok, metadata} <- string_map(Keyword.get(opts, :metadata, %{}), :metadata) do
        store!() |> Native.var_set(session, write, metadata) |> result()
      end
    end)
  end

  @doc """
  Writes several variables atomically: all writes are checked first and
  either all happen or none does.

  `writes` is a map `%{name => value}` or a list of `{name, value}` and
  `{name, value, expected_version: v}`. Option `:metadata` applies to every
  write. Returns the variables after the writes, in order.
  """
  @spec set_variables(session_id(), map() | list(), keyword()) ::
          {:ok, [Variable.t()]} | {:error, Error.t()}
  def set_variables(session, writes, opts \\ [])

  def set_variables(session, writes, opts) when is_map(writes) and not is_struct(writes),
    do: set_variables(session, Enum.to_list(writes), opts)

  def set_variables(session, writes, opts) when is_list(writes) do
    at_owner(session, :set_variables, [session, writes, opts], fn ->
      with :ok <- keyword(opts),
           {:ok, session} <- session_id(session),
           {:ok, writes} <- writes(writes),
           {:ok, metadata} <- string_map(Keyword.get(opts, :metadata, %{}), :metadata) do
        store!() |> Native.var_set_many(session, writes, metadata) |> result()
      end
    end)
  end

  def set_variables(_session, other, _opts),
    do: invalid("writes must be a map or a list, got: #{inspect(other)}")

  @doc "Variables whose name matches `pattern` (`*` matches anything), sorted by name."
  @spec list_variables(session_id(), String.t()) :: {:ok, [Variable.t()]} | {:error, Error.t()}
  def list_variables(session, pattern \\ "*") do
    at_owner(session, :list_variables, [session, pattern], fn ->
      with {:ok, session} <- session_id(session) do
        if is_binary(pattern) and String.valid?(pattern),
          do: store!() |> Native.var_list(session, pattern) |> result(),
          else: invalid("the pattern must be a UTF-8 string, got: #{inspect(pattern)}")
      end
    end)
  end

  @doc "Deletes a variable; its watchers get an update of type `:deleted`."
  @spec delete_variable(session_id(), identifier_()) :: :ok | {:error, Error.t()}
  def delete_variable(session, identifier) do
    at_owner(session, :delete_variable, [session, identifier], fn ->
      with {:ok, session} <- session_id(session),
           {:ok, identifier} <- identifier(identifier) do
        store!() |> Native.var_delete(session, identifier) |> result()
      end
    end)
  end

  # -- watching ---------------------------------------------------------------

  @doc """
  Watches variables (names or ids; all must exist) of a session from the
  calling process.

  Options: `:include_initial` (default `true`: the current values arrive
  first, as updates of type `:initial_value`, so nothing is missed between
  reading and watching) and `:buffer` (how far the watcher may fall behind:
  at most that many updates unread in its mailbox and as many waiting in the
  store, then the watch ends with `:overflow`; at most 1 048 576; default:
  the node's `watch_buffer`, 1 024; see "A watcher that does not keep up"
  above).

  Messages: `{:snakepit_variable, ref, %Snakepit.Session.Update{}}` and, if
  the watch ends on its own, `{:snakepit_watch_ended, ref, reason}` with
  `reason` `:overflow`, `:deleted` or `:expired`, where `ref` is `watch.ref`.
  """
  @spec watch(session_id(), [identifier_()], keyword()) :: {:ok, Watch.t()} | {:error, Error.t()}
  def watch(session, identifiers, opts \\ []) do
    case owner(session) do
      :here ->
        watch_here(session, identifiers, opts)

      {:remote, node} ->
        Route.call_at(node, WatchRelay, :start, [self(), session, identifiers, opts])
    end
  end

  defp watch_here(session, identifiers, opts) do
    with :ok <- keyword(opts),
         {:ok, session} <- session_id(session),
         {:ok, identifiers} <- watched(identifiers),
         {:ok, buffer} <- buffer(Keyword.get(opts, :buffer, 0)) do
      ref = make_ref()

      options = %{
        identifiers: identifiers,
        include_initial: Keyword.get(opts, :include_initial, true) == true,
        buffer: buffer
      }

      case Native.var_watch(store!(), session, options, self(), ref) do
        {:ok, handle} -> {:ok, %Watch{ref: ref, handle: handle, session_id: session}}
        error -> result(error)
      end
    end
  end

  @doc """
  Stops a watch started by this process and drops its messages still in the
  mailbox. Returns `:ok`.
  """
  @spec unwatch(Watch.t()) :: :ok
  def unwatch(%Watch{ref: ref, handle: {:relay, relay}}) do
    :ok = WatchRelay.stop(relay, ref)
    flush(ref)
  end

  def unwatch(%Watch{ref: ref, handle: handle}) do
    :ok = Native.var_unwatch(handle)
    flush(ref)
  end

  @doc false
  # Answers a watch's forwarder: how many messages `watcher` has not read.
  @spec count_mailbox(reference(), pid(), non_neg_integer()) :: :ok
  def count_mailbox(handle, watcher, question) do
    case Process.info(watcher, :message_queue_len) do
      {:message_queue_len, length} -> Native.var_watch_counted(handle, question, length)
      # The watcher exited; its monitor has ended the watch.
      nil -> :ok
    end
  end

  defp flush(ref) do
    receive do
      {:snakepit_variable, ^ref, _update} -> flush(ref)
      {:snakepit_watch_ended, ^ref, _reason} -> flush(ref)
    after
      0 -> :ok
    end
  end

  # -- helpers ----------------------------------------------------------------

  # Runs `here` when this node owns session `id` (see "Several nodes"),
  # else `fun(args...)` on the owner node. A function run for another node
  # is its owner's: it runs here.
  defp at_owner(id, fun, args, here) do
    case owner(id) do
      :here -> here.()
      {:remote, node} -> Route.call_at(node, __MODULE__, :on_owner, [fun, args])
    end
  end

  defp owner(id) do
    if is_binary(id) and not Process.get(@owner_side, false) do
      with :local <- Sessions.owner(id), do: :here
    else
      :here
    end
  end

  @doc false
  # On the owner node: runs `fun(args...)` of this module on its store.
  @spec on_owner(atom(), list()) :: term()
  def on_owner(fun, args) do
    Process.put(@owner_side, true)
    apply(__MODULE__, fun, args)
  end

  # The application bridge's resource, which owns the store (read from
  # :persistent_term on every call: no message to the bridge process).
  defp store!, do: Bridge.store!()

  defp result(:ok), do: :ok
  defp result({:ok, value}), do: {:ok, value}

  defp result({:error, {reason, message}}) do
    {:error, Error.new(:validation, message, %{reason: Map.get(@reasons, reason, reason)})}
  end

  defp invalid(message),
    do: {:error, Error.new(:validation, message, %{reason: :invalid_argument})}

  defp optional_id(nil), do: {:ok, ""}
  defp optional_id(id), do: session_id(id)

  defp keyword(opts) do
    if Keyword.keyword?(opts),
      do: :ok,
      else: invalid("options must be a keyword list, got: #{inspect(opts, limit: 5)}")
  end

  defp session_id(id) when is_binary(id) and id != "" do
    if String.valid?(id), do: {:ok, id}, else: session_id(nil)
  end

  defp session_id(id),
    do: invalid("the session id must be a non-empty UTF-8 string, got: #{inspect(id)}")

  defp identifier(name) when is_binary(name) and name != "" do
    if String.valid?(name), do: {:ok, name}, else: identifier(nil)
  end

  defp identifier(name) when is_atom(name) and name not in [nil, true, false],
    do: {:ok, Atom.to_string(name)}

  defp identifier(name),
    do:
      invalid(
        "a variable name must be a non-empty UTF-8 string or an atom, got: #{inspect(name)}"
      )

  defp identifiers(list), do: map_all(list, &identifier/1)

  # Applies `check` to every item: `{:ok, results}` in order, or the first error.
  defp map_all(list, check) do
    if is_list(list) and not List.improper?(list),
      do: map_proper(list, check),
      else: invalid("expected a list, got: #{inspect(list, limit: 5)}")
  end

  defp map_proper(list, check) do
    Enum.reduce_while(list, {:ok, []}, fn item, {:ok, acc} ->
      case check.(item) do
        {:ok, value} -> {:cont, {:ok, [value | acc]}}
        error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, values} -> {:ok, Enum.reverse(values)}
      error -> error
    end
  end

  defp watched([_ | _] = identifiers), do: identifiers(identifiers)

  defp watched(other),
    do: invalid("watch at least one variable: give a non-empty list, got: #{inspect(other)}")

  defp type(type) when type in @types, do: {:ok, Atom.to_string(type)}
  # The store names the unknown type in its error.
  defp type(type) when is_binary(type) do
    if String.valid?(type), do: {:ok, type}, else: type(nil)
  end

  defp type(type),
    do: invalid("the type must be one of #{inspect(@types)}, got: #{inspect(type)}")

  defp write({identifier, value}), do: write({identifier, value, []})

  defp write({identifier, value, opts}) when is_list(opts) do
    if Keyword.keyword?(opts), do: checked_write(identifier, value, opts), else: write(nil)
  end

  defp write(other),
    do: invalid("a write is {name, value} or {name, value, opts}, got: #{inspect(other)}")

  defp checked_write(identifier, value, opts) do
    with {:ok, identifier} <- identifier(identifier),
         {:ok, expected} <- expected_version(Keyword.get(opts, :expected_version)) do
      {:ok, {identifier, value, expected}}
    end
  end

  defp writes(list), do: map_all(list, &write/1)

  defp expected_version(nil), do: {:ok, nil}
  # Versions are 64-bit in the store.
  defp expected_version(v) when is_integer(v) and v > 0 and v < 1 <<< 64, do: {:ok, v}

  defp expected_version(v),
    do: invalid(":expected_version must be a positive integer, got: #{inspect(v)}")

  # What the store (and the bridge's `uint32 ttl_seconds`) can hold.
  @max_ttl 4_294_967_295

  defp ttl_option(opts) do
    case Keyword.get(opts, :ttl) do
      nil ->
        {:ok, 0}

      ttl when is_integer(ttl) and ttl > 0 and ttl <= @max_ttl ->
        {:ok, ttl}

      other ->
        invalid(
          ":ttl must be a positive number of seconds of at most #{@max_ttl}, got: #{inspect(other)}"
        )
    end
  end

  # The store's largest watch buffer (`snakepit_core::session::MAX_WATCH_BUFFER`).
  @max_buffer 1_048_576

  defp buffer(n) when is_integer(n) and n >= 0 and n <= @max_buffer, do: {:ok, n}

  defp buffer(other),
    do: invalid(":buffer must be an integer from 0 to #{@max_buffer}, got: #{inspect(other)}")

  defp string_map(map, name) when is_map(map) and not is_struct(map) do
    if Enum.all?(map, fn {k, v} -> stringish?(k) and stringish?(v) end),
      do: {:ok, Map.new(map, fn {k, v} -> {to_string(k), to_string(v)} end)},
      else: invalid("#{inspect(name)} must map strings to strings, got: #{inspect(map)}")
  end

  defp string_map(other, name),
    do: invalid("#{inspect(name)} must be a map, got: #{inspect(other)}")

  defp stringish?(value),
    do:
      (is_binary(value) and String.valid?(value)) or
        (is_atom(value) and value not in [nil, true, false])
end
