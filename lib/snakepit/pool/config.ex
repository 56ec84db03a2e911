defmodule Snakepit.Pool.Config do
  @moduledoc """
  Validated options of one pool.

  | option | default | meaning |
  |---|---|---|
  | `:name` | required | an atom naming the pool (`:default` is used when a call names none) |
  | `:size` | `System.schedulers_online()` | number of Python worker processes |
  | `:adapter` | the showcase adapter | dotted path of the adapter class, `"pkg.module.Class"` |
  | `:python` | `"python3"` | Python executable (name on `PATH` or absolute path) |
  | `:python_path` | `[]` | directories prepended to `PYTHONPATH` (where your adapter lives) |
  | `:worker_module` | `"snakepit_bridge.worker"` | module run as `python -m <module> --adapter … --worker-id …`; any program that speaks the worker protocol (handshake, token, `proto/`) |
  | `:env` | `%{}` | extra environment variables of the workers |
  | `:cwd` | `nil` | working directory of the workers |
  | `:start_timeout` | `30_000` | ms a worker may take to become ready |
  | `:stop_grace` | `2_000` | ms between SIGTERM and SIGKILL when a worker stops |
  | `:cancel_grace` | `3_000` | ms a timed-out or cancelled tool has to stop before its worker is recycled |
  | `:concurrency` | `8` | requests one worker serves at once |
  | `:max_queue` | `1_000` | callers that may wait for a free worker; beyond, `:pool_saturated` |
  | `:checkout_timeout` | the call's `:timeout` | ms a call may wait in the queue |
  | `:affinity` | `:hint` | default session affinity: `:hint`, `:strict_queue` or `:strict_fail_fast` |
  | `:max_requests` | `nil` | recycle a worker after this many requests |
  | `:worker_ttl` | `nil` | recycle a worker after this many ms |
  | `:max_message_bytes` | `268_435_456` (256 MiB) | largest single result, chunk or input; larger ones fail with `:message_too_large` |
  | `:output_lines_per_second` | `1_000` | lines of each worker's stdout/stderr logged per second, on average (a second's worth may come at once); the rest is dropped, counted and reported |
  | `:output_bytes_per_second` | `1_048_576` (1 MiB) | the same, in bytes of line text |
  | `:transport` | `:tcp` | how the node reaches its workers: `:tcp` (loopback, a port each worker's OS chooses) or `:unix` (a Unix socket in Linux's abstract namespace: less CPU and latency per call, no file left behind; Linux only) |

  Recycling drains a worker: it takes no new requests, finishes those in
  flight, then stops, while a fresh worker takes its place.

  A tool blocked outside Python (in C, a long `time.sleep`) cannot be
  interrupted when its call times out or its caller goes away, and its
  thread stays busy. When such a tool is still running `:cancel_grace` ms
  after it was cancelled, its worker is recycled, so stuck threads end with
  the process instead of piling up.
  """

  alias Snakepit.Error

  @enforce_keys [:name]
  defstruct name: nil,
            size: nil,
            adapter: nil,
            python: "python3",
            worker_module: "snakepit_bridge.worker",
            python_path: [],
            env: [],
            cwd: nil,
            start_timeout: 30_000,
            stop_grace: 2_000,
            cancel_grace: 3_000,
            concurrency: 8,
            max_queue: 1_000,
            checkout_timeout: nil,
            affinity: :hint,
            max_requests: nil,
            worker_ttl: nil,
            max_message_bytes: 256 * 1024 * 1024,
            output_lines_per_second: 1_000,
            output_bytes_per_second: 1024 * 1024,
            transport: :tcp

  @type t :: %__MODULE__{}

  @keys [
    :name,
    :size,
    :adapter,
    :python,
    :python_path,
    :worker_module,
    :env,
    :cwd,
    :start_timeout,
    :stop_grace,
    :cancel_grace,
    :concurrency,
    :max_queue,
    :checkout_timeout,
    :affinity,
    :max_requests,
    :worker_ttl,
    :max_message_bytes,
    :output_lines_per_second,
    :output_bytes_per_second,
    :transport
  ]

  @transports [:tcp, :unix]

  @affinities [:hint, :strict_queue, :strict_fail_fast]

  @doc "The session affinity modes."
  @spec affinities() :: [atom()]
  def affinities, do: @affinities

  @doc "Validates keyword options into a config, or explains what is wrong."
  @spec new(keyword()) :: {:ok, t()} | {:error, Error.t()}
  def new(opts) when is_list(opts) do
    with :ok <- known_keys(opts),
         {:ok, name} <- fetch_name(opts),
         {:ok, size} <- positive(opts, :size, System.schedulers_online()),
         {:ok, start_timeout} <- positive(opts, :start_timeout, 30_000),
         {:ok, stop_grace} <- non_negative(opts, :stop_grace, 2_000),
         {:ok, cancel_grace} <- positive(opts, :cancel_grace, 3_000),
         {:ok, adapter} <- adapter(opts),
         {:ok, python} <- python(opts),
         {:ok, python_path} <- string_list(opts, :python_path),
         {:ok, worker_module} <- worker_module(opts),
         {:ok, env} <- env(opts),
         {:ok, cwd} <- cwd(opts),
         {:ok, concurrency} <- positive(opts, :concurrency, 8),
         {:ok, max_queue} <- non_negative(opts, :max_queue, 1_000),
         {:ok, checkout_timeout} <- optional_positive(opts, :checkout_timeout),
         {:ok, affinity} <- affinity(Keyword.get(opts, :affinity, :hint)),
         {:ok, max_requests} <- optional_positive(opts, :max_requests),
         {:ok, worker_ttl} <- optional_positive(opts, :worker_ttl),
         {:ok, max_message_bytes} <- positive(opts, :max_message_bytes, 256 * 1024 * 1024),
         {:ok, output_lines} <- positive(opts, :output_lines_per_second, 1_000),
         {:ok, output_bytes} <- positive(opts, :output_bytes_per_second, 1024 * 1024),
         {:ok, transport} <- transport(Keyword.get(opts, :transport, :tcp)) do
      {:ok,
       %__MODULE__{
         name: name,
         size: size,
         adapter: adapter,
         python: python,
         python_path: python_path,
         worker_module: worker_module,
         env: env,
         cwd: cwd,
         start_timeout: start_timeout,
         stop_grace: stop_grace,
         cancel_grace: cancel_grace,
         concurrency: concurrency,
         max_queue: max_queue,
         checkout_timeout: checkout_timeout,
         affinity: affinity,
         max_requests: max_requests,
         worker_ttl: worker_ttl,
         max_message_bytes: max_message_bytes,
         output_lines_per_second: output_lines,
         output_bytes_per_second: output_bytes,
         transport: transport
       }}
    end
  end

  def new(other), do: invalid("pool options must be a keyword list, got: #{inspect(other)}")

  defp known_keys(opts) do
    if Keyword.keyword?(opts) do
      keys = Keyword.keys(opts)

      case {Enum.uniq(keys) -- @keys, keys -- Enum.uniq(keys)} do
        {[], []} ->
          :ok

        {[], twice} ->
          invalid("pool options given twice: #{inspect(Enum.uniq(twice))}")

        {unknown, _} ->
          invalid("unknown pool options #{inspect(unknown)}; known: #{inspect(@keys)}")
      end
    else
      invalid("pool options must be a keyword list, got: #{inspect(opts)}")
    end
  end

  defp fetch_name(opts) do
    case Keyword.fetch(opts, :name) do
      {:ok, name} when is_atom(name) and name not in [nil, true, false] -> {:ok, name}
      {:ok, other} -> invalid("pool :name must be an atom, got: #{inspect(other)}")
      :error -> invalid("a pool needs a :name")
    end
  end

  defp positive(opts, key, default) do
    case Keyword.get(opts, key, default) do
      n when is_integer(n) and n > 0 -> {:ok, n}
      other -> invalid("pool #{inspect(key)} must be a positive integer, got: #{inspect(other)}")
    end
  end

  defp non_negative(opts, key, default) do
    case Keyword.get(opts, key, default) do
      n when is_integer(n) and n >= 0 ->
        {:ok, n}

      other ->
        invalid("pool #{inspect(key)} must be a non-negative integer, got: #{inspect(other)}")
    end
  end

  defp optional_positive(opts, key) do
    case Keyword.get(opts, key) do
      nil -> {:ok, nil}
      _ -> positive(opts, key, nil)
    end
  end

  @doc """
  Checks an affinity mode: `{:ok, mode}` or a `:validation` error.
  """
  @spec affinity(term()) :: {:ok, atom()} | {:error, Error.t()}
  def affinity(mode) when mode in @affinities, do: {:ok, mode}

  def affinity(other),
    do: invalid("unknown affinity #{inspect(other)}; expected one of #{inspect(@affinities)}")

  defp transport(transport) when transport in @transports do
    if transport == :unix and not match?({:unix, :linux}, :os.type()) do
      invalid("pool :transport :unix needs Linux (abstract Unix sockets)")
    else
      {:ok, transport}
    end
  end

  defp transport(other),
    do: invalid("pool :transport must be one of #{inspect(@transports)}, got: #{inspect(other)}")

  defp adapter(opts) do
    case Keyword.get(opts, :adapter, Snakepit.Python.default_adapter()) do
      adapter when is_binary(adapter) ->
        if adapter =~ ~r/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$/ do
          {:ok, adapter}
        else
          invalid(
            "pool :adapter must be a dotted path like \"pkg.module.Class\", got: #{inspect(adapter)}"
          )
        end

      other ->
        invalid("pool :adapter must be a string, got: #{inspect(other)}")
    end
  end

  defp worker_module(opts) do
    case Keyword.get(opts, :worker_module, "snakepit_bridge.worker") do
      module when is_binary(module) ->
        if module =~ ~r/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/,
          do: {:ok, module},
          else:
            invalid("pool :worker_module must be a dotted module name, got: #{inspect(module)}")

      other ->
        invalid("pool :worker_module must be a string, got: #{inspect(other)}")
    end
  end

  defp python(opts) do
    case Keyword.get(opts, :python, "python3") do
      python when is_binary(python) ->
        case System.find_executable(python) do
          nil -> invalid("Python executable #{inspect(python)} was not found")
          path -> {:ok, path}
        end

      other ->
        invalid("pool :python must be a string, got: #{inspect(other)}")
    end
  end

  defp string_list(opts, key) do
    case Keyword.get(opts, key, []) do
      list when is_list(list) ->
        if Enum.all?(list, &is_binary/1),
          do: {:ok, list},
          else: invalid("pool #{inspect(key)} must be a list of strings, got: #{inspect(list)}")

      other ->
        invalid("pool #{inspect(key)} must be a list of strings, got: #{inspect(other)}")
    end
  end

  defp env(opts) do
    env = Keyword.get(opts, :env, [])

    if is_map(env) or is_list(env) do
      pairs = Enum.to_list(env)

      if Enum.all?(pairs, &match?({k, v} when (is_binary(k) or is_atom(k)) and is_binary(v), &1)) do
        {:ok, Enum.map(pairs, fn {k, v} -> {to_string(k), v} end)}
      else
        invalid("pool :env must map names to string values, got: #{inspect(env)}")
      end
    else
      invalid("pool :env must be a map or keyword list, got: #{inspect(env)}")
    end
  end

  defp cwd(opts) do
    case Keyword.get(opts, :cwd) do
      nil -> {:ok, nil}
      dir when is_binary(dir) -> {:ok, Path.expand(dir)}
      other -> invalid("pool :cwd must be a string, got: #{inspect(other)}")
    end
  end

  defp invalid(message),
    do: {:error, Error.new(:validation, message, %{reason: :invalid_pool_config})}
end
