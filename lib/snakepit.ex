defmodule Snakepit do
  alias Snakepit.{Call, Error, Limits, Options}
  alias Snakepit.Cluster.Route
  alias Snakepit.Pool.{Checkout, Config}

  @execute_timeout 30_000
  @max_metadata_entries 64
  @max_metadata_bytes 4_096
  # In all: it travels with every Python log record of the call.
  @max_metadata_total 8_192
  @stream_timeout 300_000

  @call_schema [
    pool: [type: :name, default: :default, doc: "the pool to use"],
    node: [
      type: :name,
      default: nil,
      doc_default: "chosen by load",
      doc: """
      the node to run the call on (connected, serving the pool); by default
      the caller's node when its pool has a free slot, else the node whose
      pool has the most, and for a call in a session the session's owner
      node (see `Snakepit.Cluster`)
      """
    ],
    timeout: [
      type: :timeout,
      default: @execute_timeout,
      doc_default: "`30_000`; `300_000` for streams",
      doc: "milliseconds for the whole call (at most #{Limits.max_timeout()}), or `:infinity`"
    ],
    session_id: [
      type: {:custom, &__MODULE__.check_session_id/1},
      default: nil,
      doc_default: "none",
      doc: """
      a session: the call prefers the worker that holds the session's Python
      state, and the tool sees the id as `self.session_context.session_id`
      (see `execute_in_session/4`); the call creates or renews the session in
      the store of the node it runs on (`Snakepit.Session`), so its variables
      are there for the tool
      """
    ],
    affinity: [
      type: {:in, Config.affinities()},
      default: nil,
      doc_default: "the pool's (`:hint`)",
      doc: """
      how strictly a session sticks to its worker: `:hint`, `:strict_queue`
      or `:strict_fail_fast` (see `Snakepit.Pool.Checkout`)
      """
    ],
    checkout_timeout: [
      type: :non_neg_integer,
      max: Limits.max_timeout(),
      default: nil,
      doc_default: "the pool's, else the whole `:timeout`",
      doc: "milliseconds the call may wait for a free worker"
    ],
    metadata: [
      type: {:custom, &__MODULE__.check_metadata/1},
      default: %{},
      doc: """
      a map of strings (atom keys allowed), e.g. a correlation or trace id:
      the tool sees it as `self.session_context.metadata`, and the Python log
      records made during the call carry it (see "Python logs" in the
      README); at most #{@max_metadata_entries} entries of at most
      #{@max_metadata_bytes} bytes each, #{@max_metadata_total} bytes in all
      """
    ],
    binary_parameters: [
      type: {:custom, &__MODULE__.check_binary_parameters/1},
      default: %{},
      doc: """
      a map of name => binary passed to the tool as `bytes` keyword
      arguments, without JSON or base64
      """
    ]
  ]

  @stream_schema [
    idle_timeout: [
      type: :timeout,
      default: :infinity,
      doc: """
      milliseconds allowed between two chunks; when it passes, the stream
      ends with a `:timeout` error and the tool is stopped
      """
    ],
    raw_binaries: [
      type: :boolean,
      default: false,
      doc: """
      when `true`, bytes that the tool yields arrive as a binary under
      `"data"` instead of base64 text under `"raw_data_base64"`
      """
    ]
  ]

  @universal_schema [
    kwargs: [
      type: {:custom, &__MODULE__.check_kwargs/1},
      default: %{},
      doc: "keyword arguments of the Python call: a map or keyword list"
    ],
    profile: [
      type: :name,
      default: nil,
      doc_default: "the module's library profile, if any",
      doc: """
      a named set of these options in `config :snakepit, :profiles`; without
      it, `config :snakepit, :library_profiles` may name one for the
      module's top-level package (see "Timeout profiles" in `call/4`)
      """
    ],
    item_timeout: [
      type: :timeout,
      default: :infinity,
      doc: """
      for refs and stream refs the call returns: milliseconds an enumeration
      may wait for the next item
      """
    ],
    stream_timeout: [
      type: :timeout,
      default: :infinity,
      doc: "for refs and stream refs the call returns: milliseconds one enumeration may last"
    ],
    prefetch: [
      type: :pos_integer,
      max: 100_000,
      default: 512,
      doc: """
      for refs and stream refs the call returns: most items one round trip
      fetches (batches grow from 16 up to it)
      """
    ]
  ]

  @universal_options Keyword.delete(@call_schema, :binary_parameters) ++ @universal_schema

  # Every call takes the stream options too (unary calls ignore them), so one
  # keyword list serves all kinds of call.
  @execute_options @call_schema ++ @stream_schema
  @stream_options Keyword.update!(
                    @execute_options,
                    :timeout,
                    &Keyword.put(&1, :default, @stream_timeout)
                  )

  @moduledoc """
  Run Python tools from Elixir: pools of supervised Python worker processes,
  request/response calls, and streams delivered chunk by chunk.

      {:ok, %{"message" => "pong"}} = Snakepit.execute("ping", %{})
      {:ok, 8} = Snakepit.execute("add", %{a: 5, b: 3})

      :ok =
        Snakepit.execute_stream("stream_progress", %{steps: 5, delay_ms: 200}, fn chunk ->
          IO.inspect(chunk)
        end)

  Tools are methods of a Python adapter class marked with `@tool`
  (see the README). The `:snakepit` application starts the pools listed in
  `config :snakepit, pools: [...]` (by default one pool, `:default`, running
  the bundled showcase adapter); see `Snakepit.Pool` for starting pools in your
  own supervision tree.

  ## Options of every call

  #{Options.docs(@call_schema)}

  Streams (`execute_stream/4`, `execute_duplex/5`) also take:

  #{Options.docs(@stream_schema)}

  For compatibility with older code, a bare integer in place of the options is
  the timeout. Invalid options are refused with a `:validation` error whose
  `details.option` names the option.

  ## How values cross to Python

  Arguments travel as JSON:

  | Elixir | Python |
  |---|---|
  | integers (any size) | `int` |
  | floats | `float`, bit for bit (a float stays a float) |
  | `true`, `false`, `nil` | `True`, `False`, `None` |
  | other atoms | `str` (`:ok` → `"ok"`) |
  | strings (UTF-8 binaries) | `str` |
  | lists, tuples | `list` |
  | non-empty keyword lists | `dict` |
  | maps with atom, string or integer keys | `dict` with `str` keys |

  Results come back the same way: dicts become maps with **string** keys,
  `None` becomes `nil`. A tool that returns `bytes` gives an Elixir binary.
  Doubles cross bit for bit and integers keep every digit, both ways.

  What cannot cross is refused with a `:validation` error whose
  `details.path` says where the bad value is (`args["a"][0]`, or
  `result[...]`/`chunk[...]` for what Python sends back), and whose
  `details.reason` says why; nothing is sent, nothing is silently changed:

    * pids, references, functions, ports, structs, non-UTF-8 binaries and
      improper lists (`:invalid_argument`);
    * values nested deeper than #{Limits.max_depth()} lists, maps and tuples, in either
      direction (`:too_deep`);
    * maps whose keys would collide as JSON keys (`%{:a => 1, "a" => 2}`,
      `%{1 => x, "1" => y}`), keyword lists with a repeated key
      (`[a: 1, a: 2]`), and Python dicts that do the same (`{1: x, "1": y}`)
      (`:duplicate_key`);
    * integers of more than #{Limits.max_integer_digits()} decimal digits, CPython's default limit
      for converting integers to and from text (`:number_out_of_range`).

  Python results that JSON cannot carry (NaN, infinity, an object of an
  unknown type) fail in the worker with a `:python` `SerializationError`.

  ## Errors

  Every failure is `{:error, %Snakepit.Error{}}`; see `Snakepit.Error`.
  """

  @type command :: String.t()
  @type args :: map() | keyword()
  @type chunk :: %{optional(String.t()) => term()}
  @type callback :: (chunk() -> term())
  @type opts :: keyword() | timeout()

  @doc """
  Runs `command` with `args` on a worker and returns its result.

      iex> Snakepit.execute("add", %{a: 1, b: 2})
      {:ok, 3}
  """
  @spec execute(command(), args(), opts()) :: {:ok, term()} | {:error, Error.t()}
  def execute(command, args \\ %{}, opts \\ []) do
    with {:ok, valid} <- options(opts, @execute_options),
         :ok <- validate(command, args) do
      case Route.place(valid) do
        :local ->
          Checkout.with_worker(valid.pool, valid, deadline(valid.timeout), fn worker, timeout ->
            Call.unary(worker, command, args, valid, timeout)
          end)

        {:remote, node} ->
          opts = Keyword.put(keyword_options(opts), :node, node)
          Route.run(node, Snakepit, :execute, [command, args, opts], valid.timeout)

        {:error, _} = error ->
          error
      end
    end
  end

  defp keyword_options(timeout) when is_integer(timeout) or timeout == :infinity,
    do: [timeout: timeout]

  defp keyword_options(opts), do: opts

  @doc """
  Runs `command` in session `session_id`: like `execute/3` with the
  `:session_id` option. Requests of one session go to the worker that served
  its first request, so Python state kept there (models, counters, caches) is
  found again:

      {:ok, _} = Snakepit.execute_in_session("user_42", "set_counter", %{value: 1})
      {:ok, %{"value" => 1}} = Snakepit.execute_in_session("user_42", "get_counter", %{})
  """
  @spec execute_in_session(String.t(), command(), args(), opts()) ::
          {:ok, term()} | {:error, Error.t()}
  def execute_in_session(session_id, command, args \\ %{}, opts \\ []) do
    with {:ok, opts} <- session_options(session_id, opts) do
      execute(command, args, opts)
    end
  end

  @doc """
  Streams `command` in session `session_id`: like `execute_stream/4` with the
  `:session_id` option.
  """
  @spec execute_in_session_stream(String.t(), command(), args(), callback(), opts()) ::
          :ok | {:error, Error.t()}
  def execute_in_session_stream(session_id, command, args, callback, opts \\ []) do
    with {:ok, opts} <- session_options(session_id, opts) do
      execute_stream(command, args, callback, opts)
    end
  end

  defp session_options(session_id, opts) when is_integer(opts) or opts == :infinity,
    do: session_options(session_id, timeout: opts)

  defp session_options(session_id, opts) when is_list(opts) do
    cond do
      not Keyword.keyword?(opts) ->
        session_options(session_id, {:not_keyword, opts})

      is_binary(session_id) and session_id != "" ->
        {:ok, Keyword.put(opts, :session_id, session_id)}

      true ->
        invalid("the session id must be a non-empty string, got: #{inspect(session_id)}")
    end
  end

  defp session_options(_session_id, {:not_keyword, opts}),
    do: invalid("options must be a keyword list, got: #{inspect(opts)}")

  defp session_options(_session_id, opts),
    do: invalid("options must be a keyword list, got: #{inspect(opts)}")

  @doc """
  Runs the streaming tool `command` and calls `callback` with each chunk, in
  order, in the calling process, as the chunks arrive.

  A chunk is a map with string keys: what the tool yielded (a non-map value
  arrives as `%{"data" => value}`, bytes as `%{"raw_data_base64" => ...}`), plus
  `"is_final"` and, when there is any, `"_metadata"`. The last chunk has
  `"is_final" => true`; its metadata carries `"execution_time_ms"`,
  `"tool_type"` and `"worker_id"`.

  The callback may return `:halt` to stop the stream early (the result is then
  `:ok`), or `{:halt, reason}` to stop it with an error. If it raises, the
  stream is cancelled and the exception propagates to the caller. Any other
  return value continues the stream.

  Returns `:ok` when the stream completed.
  """
  @spec execute_stream(command(), args(), callback(), opts()) :: :ok | {:error, Error.t()}
  def execute_stream(command, args, callback, opts \\ [])

  def execute_stream(command, args, callback, opts) when is_function(callback, 1) do
    with {:ok, opts} <- options(opts, @stream_options),
         :ok <- validate(command, args) do
      case Route.place(opts) do
        :local ->
          Checkout.with_worker(opts.pool, opts, deadline(opts.timeout), fn worker, timeout ->
            Call.stream(worker, command, args, callback, Call.stream_opts(opts, timeout))
          end)

        {:remote, node} ->
          Route.stream(node, command, args, nil, callback, opts)

        {:error, _} = error ->
          error
      end
    end
  end

  def execute_stream(_command, _args, callback, _opts) do
    invalid("the callback must be a function of one argument, got: #{inspect(callback)}")
  end

  @doc """
  Runs the duplex tool `command`: the items of `inputs` stream to the tool
  while its outputs stream back to `callback`, as in `execute_stream/4`.

  The tool receives the inputs as its `inputs` argument, an iterator (or
  async iterator) that ends when `inputs` is exhausted:

      @tool(supports_streaming=True)
      def frame_rms(self, inputs, sample_width: int = 2):
          for index, frame in enumerate(inputs):
              yield {"frame": index, "rms": rms(frame)}

  Binaries in `inputs` reach Python as `bytes`, with no JSON or base64 on the
  wire; any other term travels as JSON. `inputs` may be any enumerable, also
  an infinite or slow `Stream`: it is read lazily, only as fast as the tool
  consumes it. Outputs, options, halting, timeouts and cancellation work as in
  `execute_stream/4`; when the stream ends early, the rest of `inputs` is not
  read.

      frames = Stream.map(1..50, fn _ -> :crypto.strong_rand_bytes(320) end)

      :ok =
        Snakepit.execute_duplex("frame_rms", %{}, frames, fn chunk ->
          IO.inspect(chunk["rms"])
        end)
  """
  @spec execute_duplex(command(), args(), Enumerable.t(), callback(), opts()) ::
          :ok | {:error, Error.t()}
  def execute_duplex(command, args, inputs, callback, opts \\ [])

  def execute_duplex(command, args, inputs, callback, opts) when is_function(callback, 1) do
    with {:ok, opts} <- options(opts, @stream_options),
         :ok <- validate(command, args),
         :ok <- validate_inputs(inputs) do
      case Route.place(opts) do
        :local ->
          Checkout.with_worker(opts.pool, opts, deadline(opts.timeout), fn worker, timeout ->
            Call.duplex(worker, command, args, inputs, callback, Call.stream_opts(opts, timeout))
          end)

        {:remote, node} ->
          Route.stream(node, command, args, inputs, callback, opts)

        {:error, _} = error ->
          error
      end
    end
  end

  def execute_duplex(_command, _args, _inputs, callback, _opts) do
    invalid("the callback must be a function of one argument, got: #{inspect(callback)}")
  end

  defp validate_inputs(inputs) do
    # Functions implement Enumerable, but only those of arity 2 enumerate.
    if Enumerable.impl_for(inputs) && (not is_function(inputs) or is_function(inputs, 2)) &&
         not (is_list(inputs) and List.improper?(inputs)),
       do: :ok,
       else: invalid("inputs must be an enumerable, got: #{inspect(inputs, limit: 5)}")
  end

  @doc """
  Describes a worker of the pool: protocol and runtime versions, the adapter,
  and its tools with their parameters and whether they stream.

  Accepts `:pool`, `:node` and `:timeout` (default 30 000 ms); a pool of
  another node is described by one of its workers there (chosen as for
  `execute/3`).

      iex> {:ok, description} = Snakepit.describe()
      iex> description["protocol_version"]
      "1"
      iex> Enum.find(description["tools"], &(&1["name"] == "stream_progress"))["supports_streaming"]
      true
  """
  @spec describe(keyword()) :: {:ok, map()} | {:error, Error.t()}
  def describe(opts \\ []) do
    with {:ok, valid} <- options(opts, @execute_options) do
      case Route.place(valid) do
        :local ->
          Checkout.with_worker(valid.pool, valid, deadline(valid.timeout), &Call.describe/2)

        {:remote, node} ->
          Route.run(
            node,
            Snakepit,
            :describe,
            [Keyword.put(keyword_options(opts), :node, node)],
            valid.timeout
          )

        {:error, _} = error ->
          error
      end
    end
  end

  @doc """
  Calls any Python function on a worker of the pool, without an adapter
  tool: imports `module` and calls `function` (a dotted path such as
  `"AutoModel.from_pretrained"`) with the positional `args` and the
  `:kwargs` option.

      iex> Snakepit.call("math", "sqrt", [16])
      {:ok, 4.0}
      iex> Snakepit.call("json", "dumps", [%{a: 1}], kwargs: %{sort_keys: true})
      {:ok, ~s({"a": 1})}

  ## Results

  Values cross as for `execute/3` (JSON; bytes as binaries, also inside
  lists and maps). NumPy arrays and scalars, pydantic models and dataclasses
  come back in their plain form (`tolist()`, `model_dump()`, their fields)
  when it takes at most the pool's `:max_plain_bytes`. Generators, iterators
  and async generators come back as `Snakepit.StreamRef`s (also inside a list
  or map), to enumerate lazily. Any other object stays in the worker and
  comes back as a `Snakepit.Ref`; pass it back in `args` or `:kwargs` and
  Python gets the object again:

      {:ok, range} = Snakepit.call("builtins", "range", [100])   # a %Snakepit.Ref{}
      {:ok, list} = Snakepit.call("builtins", "list", [range])
      [0, 1, 2] = Enum.take(range, 3)

  A call whose arguments hold refs runs on the refs' worker (see
  `Snakepit.Ref` for their lifetime). Python exceptions (a missing module,
  function or attribute included) are `:python` errors with the Python type
  and traceback. A pool started with `allow_call: false` refuses with
  `:call_not_allowed`; one with a list of modules refuses others the same
  way.

  ## Options

  Those of `execute/3` (`:pool`, `:node`, `:timeout`, `:session_id`,
  `:affinity`, `:checkout_timeout`), and:

  #{Options.docs(@universal_schema)}

  ## Timeout profiles

      config :snakepit,
        profiles: %{
          ml_inference: [timeout: 600_000, item_timeout: 60_000, stream_timeout: 1_800_000],
          batch_job: [timeout: :infinity, stream_timeout: :infinity]
        },
        library_profiles: %{"transformers" => :ml_inference}

  A profile is a keyword list of the options above; options given to the
  call take precedence over its profile's.
  """
  @spec call(String.t(), String.t(), list(), keyword() | timeout()) ::
          {:ok, term()} | {:error, Error.t()}
  def call(module, function, args \\ [], opts \\ []) do
    with :ok <- validate_path(function, "function"),
         :ok <- validate_args(args),
         {:ok, opts} <- universal_options(opts, library(module)) do
      Snakepit.Objects.call(module, function, :call, args, opts)
    end
  end

  @doc """
  Reads attribute `name` (a dotted path) of a module or of a ref's object.

      iex> Snakepit.attr("math", "pi")
      {:ok, 3.141592653589793}

  Takes the options of `call/4` (`:kwargs` aside); the value comes back as a
  call's result does.
  """
  @spec attr(String.t() | Snakepit.Ref.t(), String.t(), keyword() | timeout()) ::
          {:ok, term()} | {:error, Error.t()}
  def attr(target, name, opts \\ []) do
    with :ok <- validate_path(name, "attribute"),
         {:ok, opts} <- universal_options(opts, library(target)) do
      Snakepit.Objects.call(target, name, :attr, [], opts)
    end
  end

  @doc """
  Calls method `name` (a dotted path: `"a.sum"` is `obj.a.sum()`) of a ref's
  object, on the ref's worker.

      {:ok, df} = Snakepit.call("pandas", "DataFrame", [%{"a" => [1, 2, 3]}])
      {:ok, 6} = Snakepit.method(df, "a.sum", [])

  Takes the options of `call/4`.
  """
  @spec method(
          Snakepit.Ref.t() | Snakepit.StreamRef.t(),
          String.t(),
          list(),
          keyword() | timeout()
        ) ::
          {:ok, term()} | {:error, Error.t()}
  def method(ref, name, args \\ [], opts \\ [])

  def method(%struct{} = ref, name, args, opts)
      when struct in [Snakepit.Ref, Snakepit.StreamRef] do
    with :ok <- validate_path(name, "method"),
         :ok <- validate_args(args),
         {:ok, opts} <- universal_options(opts, library(ref)) do
      Snakepit.Objects.call(ref, name, :call, args, opts)
    end
  end

  def method(other, _name, _args, _opts),
    do: invalid("method/4 takes a ref, got: #{inspect(other, limit: 5)}")

  @doc """
  Releases a ref's (or stream ref's) Python object in its worker now, rather
  than when its session ends or the process that made it exits. Releasing
  twice, or a ref whose worker is gone, is `:ok`; using a released ref is a
  `:validation` error with reason `:ref_released`.
  """
  @spec release(Snakepit.Ref.t() | Snakepit.StreamRef.t()) :: :ok | {:error, Error.t()}
  def release(%struct{} = ref) when struct in [Snakepit.Ref, Snakepit.StreamRef],
    do: Snakepit.Objects.release(ref)

  def release(other), do: invalid("release/1 takes a ref, got: #{inspect(other, limit: 5)}")

  defp universal_options(timeout, library) when is_integer(timeout) or timeout == :infinity,
    do: universal_options([timeout: timeout], library)

  defp universal_options(opts, library) do
    keyword? = is_list(opts) and Keyword.keyword?(opts)
    profile = if keyword?, do: Keyword.get(opts, :profile)

    with {:ok, defaults} <- Snakepit.Objects.Profiles.options(profile, library),
         {:ok, valid} <-
           options(
             if(keyword?, do: Keyword.merge(defaults, opts), else: opts),
             @universal_options
           ) do
      {:ok, Map.put(valid, :pool_given?, keyword? and Keyword.has_key?(opts, :pool))}
    end
  end

  defp library(module) when is_binary(module), do: module |> String.split(".") |> hd()
  defp library(%Snakepit.Ref{python_module: module}) when is_binary(module), do: library(module)
  defp library(%Snakepit.StreamRef{library: library}), do: library
  defp library(_other), do: nil

  defp validate_path(path, what) do
    if is_binary(path) and path =~ ~r/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/,
      do: :ok,
      else: invalid("the #{what} must be a dotted Python name, got: #{inspect(path, limit: 5)}")
  end

  defp validate_args(args) do
    if is_list(args) and not List.improper?(args),
      do: :ok,
      else: invalid("args must be a list, got: #{inspect(args, limit: 5)}")
  end

  @doc false
  # `[]` is no keyword arguments (JSON would make it a list, not an object).
  def check_kwargs([]), do: {:ok, %{}}

  def check_kwargs(kwargs) do
    if (is_map(kwargs) and not is_struct(kwargs)) or
         (is_list(kwargs) and Keyword.keyword?(kwargs)),
       do: {:ok, kwargs},
       else: {:error, "must be a map or a keyword list, got: #{inspect(kwargs, limit: 5)}"}
  end

  defp validate(command, args) do
    cond do
      not is_binary(command) or command == "" or not String.valid?(command) ->
        invalid("the command must be a non-empty UTF-8 string, got: #{inspect(command)}")

      String.starts_with?(command, "snakepit.") ->
        invalid(
          "tool names starting with \"snakepit.\" are reserved for Snakepit.call/4 and its kin, got: #{inspect(command)}"
        )

      not (is_map(args) or Keyword.keyword?(args)) or is_struct(args) ->
        invalid("args must be a map or a keyword list, got: #{inspect(args)}")

      true ->
        :ok
    end
  end

  defp options(timeout, schema) when is_integer(timeout) or timeout == :infinity,
    do: options([timeout: timeout], schema)

  defp options(opts, schema) do
    with {:ok, opts} <- Options.validate(opts, schema, nil) do
      # `""` is no session.
      {:ok, %{opts | session_id: opts.session_id || ""}}
    end
  end

  defp deadline(:infinity), do: :infinity
  defp deadline(timeout), do: System.monotonic_time(:millisecond) + timeout

  @doc false
  def check_session_id(id) do
    if is_binary(id) and id != "" and String.valid?(id),
      do: {:ok, id},
      else: {:error, "must be a non-empty UTF-8 string, got: #{inspect(id)}"}
  end

  @doc false
  def check_metadata(metadata) when is_list(metadata) do
    cond do
      not Keyword.keyword?(metadata) ->
        {:error, "must be a map of strings, got: #{inspect(metadata, limit: 5)}"}

      length(Enum.uniq(Keyword.keys(metadata))) < length(metadata) ->
        {:error, "names a key twice: #{inspect(Keyword.keys(metadata), limit: 10)}"}

      true ->
        check_metadata(Map.new(metadata))
    end
  end

  def check_metadata(metadata) when is_map(metadata) and not is_struct(metadata) do
    named =
      Map.new(metadata, fn {k, v} -> {if(is_atom(k), do: Atom.to_string(k), else: k), v} end)

    cond do
      map_size(metadata) > @max_metadata_entries ->
        {:error, "has #{map_size(metadata)} entries; at most #{@max_metadata_entries}"}

      map_size(named) < map_size(metadata) ->
        {:error,
         "names a key twice (as an atom and a string): " <>
           inspect(Map.keys(metadata), limit: 10, printable_limit: 64)}

      bad = Enum.find(named, fn {k, v} -> not (metadata_text?(k) and metadata_text?(v)) end) ->
        {:error,
         "must map strings to strings of at most #{@max_metadata_bytes} bytes, got: " <>
           inspect(bad, limit: 5, printable_limit: 64)}

      Enum.sum(for {k, v} <- named, do: byte_size(k) + byte_size(v)) > @max_metadata_total ->
        {:error, "holds more than #{@max_metadata_total} bytes of keys and values"}

      true ->
        {:ok, named}
    end
  end

  def check_metadata(other),
    do: {:error, "must be a map of strings, got: #{inspect(other, limit: 5)}"}

  defp metadata_text?(text),
    do: is_binary(text) and byte_size(text) <= @max_metadata_bytes and String.valid?(text)

  @doc false
  def check_binary_parameters(map) when is_map(map) and not is_struct(map) do
    valid_name? = fn k -> (is_binary(k) and String.valid?(k)) or is_atom(k) end

    case Enum.find(map, fn {k, v} -> not (valid_name?.(k) and is_binary(v)) end) do
      nil ->
        named = Map.new(map, fn {k, v} -> {to_string(k), v} end)

        if map_size(named) == map_size(map),
          do: {:ok, named},
          else:
            {:error,
             Error.new(
               :validation,
               "binary parameters name the same parameter twice (as an atom and a string): #{inspect(Map.keys(map))}",
               %{reason: :duplicate_key}
             )}

      {key, value} ->
        {:error,
         Error.new(
           :validation,
           "binary parameter #{inspect(key)} must be a binary under a string or atom name, got: #{inspect(value, limit: 5)}",
           %{reason: :invalid_binary_parameter, parameter: key}
         )}
    end
  end

  def check_binary_parameters(other), do: {:error, "must be a map, got: #{inspect(other)}"}

  defp invalid(message),
    do: {:error, Error.new(:validation, message, %{reason: :invalid_argument})}
end
