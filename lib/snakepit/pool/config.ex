defmodule Snakepit.Pool.Config do
  alias Snakepit.{Limits, Options}

  @affinities [:hint, :strict_queue, :strict_fail_fast]

  @schema [
    name: [
      type: :name,
      required: true,
      doc: "an atom naming the pool (`:default` is used when a call names none)"
    ],
    size: [
      type: :pos_integer,
      max: 10_000,
      default_by: &System.schedulers_online/0,
      doc_default: "`System.schedulers_online()`",
      doc: "number of Python worker processes"
    ],
    adapter: [
      type: {:custom, &__MODULE__.check_adapter/1},
      default_by: &Snakepit.Python.default_adapter/0,
      doc_default: "the showcase adapter",
      doc: ~S|dotted path of the adapter class, `"pkg.module.Class"`|
    ],
    python: [
      type: {:custom, &__MODULE__.check_python/1},
      default: "python3",
      doc: "Python executable (name on `PATH` or absolute path)"
    ],
    python_path: [
      type: {:custom, &__MODULE__.check_string_list/1},
      default: [],
      doc: "directories prepended to `PYTHONPATH` (where your adapter lives)"
    ],
    worker_module: [
      type: {:custom, &__MODULE__.check_worker_module/1},
      default: "snakepit_bridge.worker",
      doc: """
      module run as `python -m <module> --adapter … --worker-id …`; any
      program that speaks the worker protocol (handshake, token, `proto/`)
      """
    ],
    env: [
      type: {:custom, &__MODULE__.check_env/1},
      default: %{},
      doc: "extra environment variables of the workers"
    ],
    cwd: [
      type: {:custom, &__MODULE__.check_cwd/1},
      default: nil,
      doc: "working directory of the workers"
    ],
    start_timeout: [
      type: :pos_integer,
      max: 4_000_000_000,
      default: 30_000,
      doc: "ms a worker may take to become ready"
    ],
    stop_grace: [
      type: :non_neg_integer,
      max: 4_000_000_000,
      default: 2_000,
      doc: "ms between SIGTERM and SIGKILL when a worker stops"
    ],
    cancel_grace: [
      type: :pos_integer,
      max: 4_000_000_000,
      default: 3_000,
      doc: "ms a timed-out or cancelled tool has to stop before its worker is recycled"
    ],
    concurrency: [
      type: :pos_integer,
      max: 65_536,
      default: 8,
      doc: "requests one worker serves at once"
    ],
    max_queue: [
      type: :non_neg_integer,
      max: 100_000_000,
      default: 1_000,
      doc: "callers that may wait for a free worker; beyond, `:pool_saturated`"
    ],
    checkout_timeout: [
      type: :pos_integer,
      max: 4_000_000_000,
      default: nil,
      doc_default: "the call's `:timeout`",
      doc: "ms a call may wait in the queue"
    ],
    affinity: [
      type: {:in, @affinities},
      default: :hint,
      doc: """
      default session affinity: `:hint`, `:strict_queue` or `:strict_fail_fast`
      (see `Snakepit.Pool.Checkout`)
      """
    ],
    local_only: [
      type: :boolean,
      default: false,
      doc: "keep the pool to this node: other nodes of the cluster neither see nor call it"
    ],
    max_requests: [
      type: :pos_integer,
      max: 9_223_372_036_854_775_807,
      default: nil,
      doc: "recycle a worker after this many requests"
    ],
    max_memory_mb: [
      type: :pos_integer,
      max: 4_000_000,
      default: nil,
      doc: """
      recycle a worker whose resident memory passes this many MiB (read
      from `/proc` every second, on Linux; ignored where `/proc` is not):
      it takes no new calls, finishes those in flight, and is replaced; one
      worker per second at most, the largest first
      """
    ],
    worker_ttl: [
      type: :pos_integer,
      max: 4_000_000_000,
      default: nil,
      doc: "recycle a worker after this many ms"
    ],
    max_message_bytes: [
      type: :pos_integer,
      max: 4 * 1024 * 1024 * 1024,
      default: Limits.max_message_bytes(),
      doc: """
      largest single result, chunk or input; larger ones fail with
      `:message_too_large`
      """
    ],
    output_lines_per_second: [
      type: :pos_integer,
      max: 4_294_967_295,
      default: 1_000,
      doc: """
      lines of each worker's stdout/stderr logged per second, on average (a
      second's worth may come at once); the rest is dropped, counted and
      reported
      """
    ],
    output_bytes_per_second: [
      type: :pos_integer,
      max: 4_294_967_295,
      default: 1024 * 1024,
      doc: "the same, in bytes of line text"
    ],
    allow_call: [
      type: {:custom, &__MODULE__.check_allow_call/1},
      default: true,
      doc: """
      whether `Snakepit.call/4` and its kin may run on this pool's workers:
      `true`, `false`, or a list of module names they may import (a name
      allows its submodules). A guard against mistakes, not a sandbox: a
      ref's attributes reach whatever its object reaches
      """
    ],
    max_refs: [
      type: :pos_integer,
      max: 100_000_000,
      default: 10_000,
      doc: "live Python objects (refs, stream refs) one session or process may hold on a worker"
    ],
    ref_ttl: [
      type: :pos_integer,
      max: 4_000_000_000,
      default: 3_600_000,
      doc: "ms an unused ref lives before its worker releases it"
    ],
    max_plain_bytes: [
      type: :pos_integer,
      max: 4 * 1024 * 1024 * 1024,
      default: 4 * 1024 * 1024,
      doc: """
      largest JSON of a NumPy array, pydantic model or dataclass that a
      universal call returns as a plain value; larger ones come back as refs
      """
    ],
    transport: [
      type: {:custom, &__MODULE__.check_transport/1},
      default: :tcp,
      doc: """
      how the node reaches its workers: `:tcp` (loopback, a port each
      worker's OS chooses) or `:unix` (a Unix socket in Linux's abstract
      namespace: less CPU and latency per call, no file left behind; Linux
      only)
      """
    ]
  ]

  @moduledoc """
  Validated options of one pool.

  #{Options.docs(@schema)}

  Recycling drains a worker: it takes no new requests, finishes those in
  flight, then stops, while a fresh worker takes its place.

  A tool blocked outside Python (in C, a long `time.sleep`) cannot be
  interrupted when its call times out or its caller goes away, and its
  thread stays busy. When such a tool is still running `:cancel_grace` ms
  after it was cancelled, its worker is recycled, so stuck threads end with
  the process instead of piling up.

  Invalid options are a `:validation` error whose `details.option` names the
  option.
  """

  alias Snakepit.Error

  @enforce_keys [:name]
  defstruct Options.defaults(@schema)

  @type t :: %__MODULE__{}

  @transports [:tcp, :unix]

  @doc "The session affinity modes."
  @spec affinities() :: [atom()]
  def affinities, do: @affinities

  @doc "Validates keyword options into a config, or explains what is wrong."
  @spec new(term()) :: {:ok, t()} | {:error, Error.t()}
  def new(opts) do
    with {:ok, values} <- Options.validate(opts, @schema, "pool") do
      {:ok, struct!(__MODULE__, values)}
    end
  end

  @doc false
  def check_allow_call(allow) when is_boolean(allow), do: {:ok, allow}

  def check_allow_call(modules) when is_list(modules) do
    valid? = fn name ->
      is_binary(name) and name =~ ~r/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/
    end

    if List.improper?(modules) or not Enum.all?(modules, valid?),
      do: {:error, "must be a list of Python module names, got: #{inspect(modules, limit: 10)}"},
      else: {:ok, modules}
  end

  def check_allow_call(other),
    do: {:error, "must be true, false or a list of module names, got: #{inspect(other)}"}

  @doc false
  # What the workers' universal call may do, as `snakepit_bridge.universal`
  # reads it from the environment.
  @spec universal_policy(t()) :: String.t()
  def universal_policy(config) do
    # Module names are identifiers and dots (checked): no escaping needed.
    allow =
      case config.allow_call do
        modules when is_list(modules) -> "[" <> Enum.map_join(modules, ",", &~s("#{&1}")) <> "]"
        flag -> Atom.to_string(flag)
      end

    ~s({"allow_call":#{allow},"max_refs":#{config.max_refs},) <>
      ~s("ref_ttl_ms":#{config.ref_ttl},"max_plain_bytes":#{config.max_plain_bytes}})
  end

  @doc false
  def check_transport(transport) when transport in @transports do
    if transport == :unix and not match?({:unix, :linux}, :os.type()),
      do: {:error, ":unix needs Linux (abstract Unix sockets)"},
      else: {:ok, transport}
  end

  def check_transport(other),
    do: {:error, "must be one of #{inspect(@transports)}, got: #{inspect(other)}"}

  @doc false
  def check_adapter(adapter) when is_binary(adapter) do
    if adapter =~ ~r/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$/,
      do: {:ok, adapter},
      else: {:error, ~s|must be a dotted path like "pkg.module.Class", got: #{inspect(adapter)}|}
  end

  def check_adapter(other), do: {:error, "must be a string, got: #{inspect(other)}"}

  @doc false
  def check_worker_module(module) when is_binary(module) do
    if module =~ ~r/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/,
      do: {:ok, module},
      else: {:error, "must be a dotted module name, got: #{inspect(module)}"}
  end

  def check_worker_module(other), do: {:error, "must be a string, got: #{inspect(other)}"}

  @doc false
  def check_python(python) when is_binary(python) do
    case String.valid?(python) and not String.contains?(python, <<0>>) and
           System.find_executable(python) do
      found when found in [nil, false] ->
        {:error, "must name an executable; #{inspect(python)} was not found"}

      path ->
        {:ok, path}
    end
  end

  def check_python(other), do: {:error, "must be a string, got: #{inspect(other)}"}

  @doc false
  def check_string_list(list) do
    if is_list(list) and not List.improper?(list) and Enum.all?(list, &is_binary/1),
      do: {:ok, list},
      else: {:error, "must be a list of strings, got: #{inspect(list)}"}
  end

  @doc false
  def check_env(env)
      when (is_map(env) and not is_struct(env)) or is_list(env) do
    pairs = if is_list(env) and List.improper?(env), do: [:improper], else: Enum.to_list(env)

    if Enum.all?(pairs, &match?({k, v} when (is_binary(k) or is_atom(k)) and is_binary(v), &1)),
      do: {:ok, Enum.map(pairs, fn {k, v} -> {to_string(k), v} end)},
      else: {:error, "must map names to string values, got: #{inspect(env)}"}
  end

  def check_env(other), do: {:error, "must be a map or keyword list, got: #{inspect(other)}"}

  @doc false
  def check_cwd(dir) when is_binary(dir), do: {:ok, Path.expand(dir)}
  def check_cwd(other), do: {:error, "must be a string, got: #{inspect(other)}"}
end
