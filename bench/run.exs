# Snakepit benchmarks, side by side with two baselines. Run with
# `bash bench/run.sh` (which prepares the bench venv and the generated
# grpcio code, then runs `mix run bench/run.exs` and bench/report.py).
#
# Writes every figure (and the latency samples for the plot) to
# _build/bench-raw.json; bench/report.py turns it into bench/results/.
#
# SNAKEPIT_BENCH_ONLY selects sections (comma-separated): `main` (everything
# on this node: unary, binaries, streams, outside clients, start-up),
# `cross_node` (a pool on a peer node against the same pool here) and
# `telemetry` (calls with a telemetry handler against none). Default: all.
# E.g. `SNAKEPIT_BENCH_ONLY=cross_node mix run bench/run.exs`.

root = Path.expand("..", __DIR__)
Code.require_file("lib/json.ex", __DIR__)
Code.require_file("lib/port_echo.ex", __DIR__)
Code.require_file("../test/support/wait.ex", __DIR__)
Code.require_file("../test/support/os_processes.ex", __DIR__)
Code.require_file("../test/support/distribution.ex", __DIR__)
Code.require_file("lib/nodes.ex", __DIR__)
Code.require_file("lib/telemetry.ex", __DIR__)

defmodule Bench do
  @moduledoc false

  def now, do: :erlang.monotonic_time()
  def us(native), do: System.convert_time_unit(native, :native, :nanosecond) / 1000
  def secs(native), do: us(native) / 1_000_000

  def log(msg),
    do: IO.puts(:stderr, "[bench +#{Float.round(secs(now() - Process.get(:t0)), 1)}s] #{msg}")

  # `total` calls of `fun` by `concurrency` tasks; latencies in µs.
  def load(fun, concurrency, total) do
    per = div(total, concurrency)
    busy0 = cpu_busy_us()
    t0 = now()

    lats =
      1..concurrency
      |> Enum.map(fn _ ->
        Task.async(fn ->
          for _ <- 1..per do
            s = now()
            fun.()
            us(now() - s)
          end
        end)
      end)
      |> Enum.flat_map(&Task.await(&1, :infinity))

    stats(lats, secs(now() - t0), cpu_busy_us() - busy0)
  end

  # CPU time all processes on the machine spent busy so far, in µs, from
  # /proc/stat (user, nice, system, irq and softirq; clock ticks).
  def cpu_busy_us do
    ["cpu" | fields] =
      "/proc/stat" |> File.read!() |> String.split("\n") |> hd() |> String.split()

    [user, nice, system, _idle, _iowait, irq, softirq | _] =
      Enum.map(fields, &String.to_integer/1)

    (user + nice + system + irq + softirq) * 1_000_000 / clock_ticks()
  end

  defp clock_ticks do
    case Process.get(:clock_ticks) do
      nil ->
        {out, 0} = System.cmd("getconf", ["CLK_TCK"])
        ticks = out |> String.trim() |> String.to_integer()
        Process.put(:clock_ticks, ticks)
        ticks

      ticks ->
        ticks
    end
  end

  # One result of several runs of `load/3`: all their samples, their walls added.
  def merge(runs) do
    sum = fn key -> runs |> Enum.map(&Map.fetch!(&1, key)) |> Enum.sum() end
    stats(Enum.flat_map(runs, & &1.samples), sum.(:wall_s), sum.(:cpu_busy_us))
  end

  defp stats(lats, wall, cpu_busy_us) do
    sorted = Enum.sort(lats)
    n = length(sorted)

    %{
      calls: n,
      cpu_busy_us: cpu_busy_us,
      cpu_us_per_call: cpu_busy_us / n,
      wall_s: wall,
      calls_per_s: n / wall,
      p50_us: pct(sorted, n, 0.50),
      p90_us: pct(sorted, n, 0.90),
      p99_us: pct(sorted, n, 0.99),
      mean_us: Enum.sum(sorted) / n,
      samples: lats
    }
  end

  def pct(sorted, n, q), do: Enum.at(sorted, min(n - 1, floor(q * n)))

  def median(list), do: list |> Enum.sort() |> Enum.at(div(length(list), 2))

  def time(fun) do
    t0 = now()
    result = fun.()
    {secs(now() - t0), result}
  end

  # Streams into a callback that counts chunks with `key`; returns per-second rates.
  # Runs in a fresh process, as a request handler would: the bench's own
  # large heap (the latency samples) would otherwise slow its garbage
  # collections, which a stream of large binaries triggers often.
  def stream_count(tool, args, key, opts) do
    Task.async(fn -> stream_count_here(tool, args, key, opts) end) |> Task.await(:infinity)
  end

  defp stream_count_here(tool, args, key, opts) do
    counter = :counters.new(2, [])

    {s, :ok} =
      time(fn ->
        Snakepit.execute_stream(
          tool,
          args,
          fn chunk ->
            case chunk do
              %{^key => v} when is_binary(v) ->
                :counters.add(counter, 1, 1)
                :counters.add(counter, 2, byte_size(v))

              %{^key => _} ->
                :counters.add(counter, 1, 1)

              _ ->
                :ok
            end

            :ok
          end,
          [timeout: 300_000] ++ opts
        )
      end)

    {s, :counters.get(counter, 1), :counters.get(counter, 2)}
  end

  # `count` chunks of the bench adapter's `stream_stamped` (one every
  # `every_us` µs; 0: as fast as they go) into a callback, in a fresh process
  # (see `stream_count/4`): the rate, and per chunk its age when the callback
  # has it (arrival minus the tool's stamp, both the OS's CLOCK_REALTIME) and
  # the time since the chunk before, in µs; the producer's rate from its
  # first and last stamps. The figures bench/python/outside_client.py prints
  # for a Python consumer.
  def stream_stamped(pool, count, every_us) do
    Task.async(fn ->
      Process.put(:stamped, [])
      busy0 = cpu_busy_us()

      {s, :ok} =
        time(fn ->
          Snakepit.execute_stream(
            "stream_stamped",
            %{count: count, every_us: every_us},
            fn
              %{"t_ns" => t} ->
                Process.put(:stamped, [{:os.system_time(:nanosecond), t} | Process.get(:stamped)])
                :ok

              _ ->
                :ok
            end,
            pool: pool,
            timeout: 300_000
          )
        end)

      busy = cpu_busy_us() - busy0
      stamped = Enum.reverse(Process.get(:stamped))
      n = length(stamped)
      arrivals = Enum.map(stamped, &elem(&1, 0))
      stamps = Enum.map(stamped, &elem(&1, 1))
      produced_s = (elem(List.last(stamped), 1) - elem(hd(stamped), 1)) / 1.0e9

      %{
        "chunks" => n,
        "seconds" => s,
        "chunks_per_s" => n / s,
        "producer_chunks_per_s" => if(produced_s > 0, do: (n - 1) / produced_s),
        "cpu_busy_us" => busy,
        "peak_ahead" => peak_ahead(arrivals, stamps, 1, 0, 0),
        "age_us" => summary(Enum.map(stamped, fn {arrival, t} -> (arrival - t) / 1000 end)),
        "gap_us" => summary(Enum.zip_with(arrivals, tl(arrivals), fn a, b -> (b - a) / 1000 end))
      }
    end)
    |> Task.await(:infinity)
  end

  # The most chunks the tool had made (`stamps`) that the consumer had not
  # had yet, seen as each chunk arrived (`arrivals`): how far the producer ran
  # ahead. `had` counts the arrivals so far, `made` the stamps up to this one.
  defp peak_ahead([arrival | _] = arrivals, [stamp | stamps], had, made, peak)
       when stamp <= arrival,
       do: peak_ahead(arrivals, stamps, had, made + 1, peak)

  defp peak_ahead([_ | arrivals], stamps, had, made, peak),
    do: peak_ahead(arrivals, stamps, had + 1, made, max(peak, made - had))

  defp peak_ahead([], _stamps, _had, _made, peak), do: peak

  defp summary(values) do
    sorted = Enum.sort(values)
    n = length(sorted)
    %{"p50" => pct(sorted, n, 0.50), "p99" => pct(sorted, n, 0.99), "max" => List.last(sorted)}
  end

  # 1 GiB in 1 MiB chunks into a callback sleeping 2 ms per chunk; peaks of
  # the VM's resident memory (the OS's view: BEAM heaps, binaries and the
  # NIF's own allocations alike) and of :erlang.memory(:total) (what the BEAM
  # allocated itself), sampled at every chunk, minus their values before.
  def slow_stream_memory(pool, gc?) do
    :erlang.garbage_collect()
    rss_before = rss_bytes()
    before = :erlang.memory(:total)
    peaks = :atomics.new(2, [])
    :atomics.put(peaks, 1, before)
    :atomics.put(peaks, 2, rss_before)

    {s, :ok} =
      time(fn ->
        Snakepit.execute_stream(
          "stream_bytes",
          %{count: 1024, size: 1024 * 1024},
          fn _chunk ->
            Process.sleep(2)
            if gc?, do: :erlang.garbage_collect()
            m = :erlang.memory(:total)
            if m > :atomics.get(peaks, 1), do: :atomics.put(peaks, 1, m)
            rss = rss_bytes()
            if rss > :atomics.get(peaks, 2), do: :atomics.put(peaks, 2, rss)
            :ok
          end,
          pool: pool,
          raw_binaries: true,
          timeout: 300_000
        )
      end)

    growth = :atomics.get(peaks, 1) - before
    rss_growth = :atomics.get(peaks, 2) - rss_before

    %{
      growth_bytes: growth,
      growth_mib: growth / 1_048_576,
      rss_growth_mib: rss_growth / 1_048_576,
      seconds: s,
      forced_gc_per_chunk: gc?
    }
  end

  # Resident memory of this OS process (Linux).
  def rss_bytes do
    [_size, resident | _] = "/proc/self/statm" |> File.read!() |> String.split()
    String.to_integer(resident) * 4096
  end
end

Process.put(:t0, Bench.now())

sections =
  case System.get_env("SNAKEPIT_BENCH_ONLY", "") do
    "" -> ["main", "cross_node", "telemetry"]
    only -> String.split(only, ",", trim: true)
  end

# Other work on the machine skews every figure: record the load at the start.
load_at_start =
  "/proc/loadavg" |> File.read!() |> String.split() |> Enum.take(3) |> Enum.join(" ")

python = Path.join(root, "_build/bench-venv/bin/python")
bench_py = Path.join(root, "bench/python")
gen_py = Path.join(root, "_build/bench-gen")
port_script = Path.join(bench_py, "port_echo.py")

snakepit_opts = fn name, size, transport ->
  [
    name: name,
    size: size,
    python: python,
    adapter: "bench_adapter.BenchAdapter",
    python_path: [bench_py],
    transport: transport
  ]
end

grpcio_opts = fn name, size ->
  [
    name: name,
    size: size,
    python: python,
    worker_module: "grpcio_worker",
    python_path: [bench_py, gen_py]
  ]
end

rounds = 4

# Programs outside the BEAM (bench/python/outside_client.py), each round a
# separate OS process running the bench venv's Python, with Snakepit's Python
# package and the stubs generated from proto/ importable; they call the node's
# bridge and print their figures as JSON.
outside_script = Path.join(bench_py, "outside_client.py")

outside = fn args ->
  env = [
    {"SNAKEPIT_ADDRESS", Snakepit.Bridge.address()},
    {"SNAKEPIT_TOKEN", Snakepit.Bridge.token()},
    {"PYTHONPATH", Enum.join([Snakepit.Python.package_dir(), gen_py], ":")}
  ]

  case System.cmd(python, [outside_script | Enum.map(args, &to_string/1)], env: env) do
    {out, 0} ->
      Bench.JSON.decode!(out)

    {out, status} ->
      raise "outside_client.py #{Enum.join(args, " ")} exited with #{status}: #{out}"
  end
end

outside_systems = [{"python_client", "client"}, {"grpcio_client", "grpcio"}]

interleaved = fn systems, c, calls ->
  runs =
    for _ <- 1..rounds, {system, fun} <- systems do
      {system, Bench.load(fun, c, div(calls, rounds))}
    end

  for {system, _} <- systems do
    {system,
     runs |> Enum.filter(&(elem(&1, 0) == system)) |> Enum.map(&elem(&1, 1)) |> Bench.merge()}
  end
end

start_ports = fn n ->
  pids =
    for _ <- 1..n do
      {:ok, pid} = Bench.PortEcho.start_link(python, port_script)
      pid
    end

  {pids, Bench.PortEcho.group(pids)}
end

payload = %{"id" => 42, "name" => "snakepit", "values" => [1, 2, 3], "ok" => true, "ratio" => 0.5}
mib = 1024 * 1024
blob = :crypto.strong_rand_bytes(mib)

# Unary load: calls per concurrency (bounded counts, kept small enough for 10 minutes).
calls_for = %{1 => 2_000, 8 => 8_000, 64 => 25_600}
warmup = 300

# Outside clients: unary echo at concurrency 1 on pools 1 and 2, in rounds
# alternating with `Snakepit.execute/3` (each Python process warms up first),
# and a stream of small stamped chunks, 3 runs per system.
outside_calls = 2_000
outside_warmup = 200
outside_chunks = 150_000
outside_paced = 1_000
outside_every_us = 500
payload_json = IO.iodata_to_binary(Bench.JSON.encode(payload))

outside_unary = fn pool, size ->
  per = div(outside_calls, rounds)

  # Each system's round gives {name, run} pairs: the grpcio client also
  # times the bridge's GetVersion, as "grpcio_get_version".
  systems =
    [
      fn ->
        echo = fn -> {:ok, _} = Snakepit.execute("echo", payload, pool: pool) end
        [{"in_beam", Bench.load(echo, 1, per)}]
      end
    ] ++
      for {system, arg} <- outside_systems do
        fn ->
          for {call, r} <- outside.(["unary", arg, pool, per, outside_warmup, payload_json]) do
            run = %{samples: r["samples_us"], wall_s: r["wall_s"], cpu_busy_us: r["cpu_busy_us"]}
            {if(call == "echo", do: system, else: "#{arg}_#{call}"), run}
          end
        end
      end

  runs = for _ <- 1..rounds, run <- systems, pair <- run.(), do: pair

  for system <- runs |> Enum.map(&elem(&1, 0)) |> Enum.uniq() do
    r = runs |> Enum.filter(&(elem(&1, 0) == system)) |> Enum.map(&elem(&1, 1)) |> Bench.merge()

    Bench.log(
      "outside unary #{system} pool=#{size}: p50 #{Float.round(r.p50_us, 1)} µs, " <>
        "p99 #{Float.round(r.p99_us, 1)} µs, #{round(r.calls_per_s)} calls/s"
    )

    Map.merge(r, %{system: system, pool_size: size, concurrency: 1})
  end
end

# Across nodes: the same pool (same adapter and options, 4 workers) on this
# node and on a peer node of this machine (`:peer`, Erlang distribution over
# loopback), called from here: pinned to this node (`node: node()`: without
# it a call at concurrency 64 would overflow to the peer once the local pool
# is full) or to the peer (`node: peer`). Rounds alternate between the two.
# Also the bare `:erpc.call/4` round trip to the peer (no Snakepit), the
# floor of a remote call.
cross_node =
  if "cross_node" in sections do
    cross_size = 4
    cross_pool = :bench_cross_node
    cross_opts = snakepit_opts.(cross_pool, cross_size, :tcp)

    Bench.log("across nodes: distribution, a peer node, a pool of #{cross_size} on each node")
    dist = Snakepit.Test.Distribution.start("snakepit_bench")

    try do
      {peer_s, {peer, peer_node}} =
        Bench.time(fn -> Snakepit.Test.Distribution.start_peer("snakepit_bench_peer") end)

      {:ok, local_pid} = Snakepit.Pool.start_link(cross_opts)
      {pool_s, peer_os_pids} = Bench.time(fn -> Bench.Nodes.start_pool(peer_node, cross_opts) end)

      Bench.log(
        "across nodes: peer #{peer_node} up in #{round(peer_s * 1000)} ms, " <>
          "its pool listed here in #{round(pool_s * 1000)} ms"
      )

      try do
        on = fn node ->
          fn -> {:ok, _} = Snakepit.execute("echo", payload, pool: cross_pool, node: node) end
        end

        systems = [{"local", on.(node())}, {"remote", on.(peer_node)}]
        erpc = {"erpc", fn -> ^peer_node = :erpc.call(peer_node, :erlang, :node, []) end}

        for {_, fun} <- [erpc | systems], do: Bench.load(fun, 8, warmup)

        unary =
          for {c, calls, systems} <- [{1, 2_000, [erpc | systems]}, {64, 12_800, systems}],
              {system, r} <- interleaved.(systems, c, calls) do
            Bench.log(
              "across nodes: unary #{system} c=#{c}: p50 #{Float.round(r.p50_us, 1)} µs, " <>
                "p99 #{Float.round(r.p99_us, 1)} µs, #{round(r.calls_per_s)} calls/s, " <>
                "CPU #{round(r.cpu_us_per_call)} µs per call (machine)"
            )

            r |> Map.delete(:samples) |> Map.merge(%{system: system, concurrency: c})
          end

        pick = fn system, c ->
          Enum.find(unary, &(&1.system == system and &1.concurrency == c))
        end

        Bench.log(
          "across nodes: remote ÷ local p50 c=1 " <>
            "#{Float.round(pick.("remote", 1).p50_us / pick.("local", 1).p50_us, 2)}× " <>
            "(remote adds #{round(pick.("remote", 1).p50_us - pick.("local", 1).p50_us)} µs), " <>
            "calls/s c=64 #{Float.round(pick.("remote", 64).calls_per_s / pick.("local", 64).calls_per_s, 2)}×"
        )

        stream_systems = [{"local", node()}, {"remote", peer_node}]

        for {_, node} <- stream_systems do
          {_, 1_000, _} =
            Bench.stream_count("stream_numbers", %{count: 1_000}, "number",
              pool: cross_pool,
              node: node
            )
        end

        stream =
          for _ <- 1..3, {system, node} <- stream_systems do
            {s, n, _} =
              Bench.stream_count("stream_numbers", %{count: 100_000}, "number",
                pool: cross_pool,
                node: node
              )

            100_000 = n
            {system, n / s}
          end
          |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
          |> Map.new(fn {system, runs} ->
            Bench.log(
              "across nodes: 100k chunks #{system}: #{Enum.map_join(runs, ", ", &round/1)} chunks/s"
            )

            {system,
             %{chunks: 100_000, runs_chunks_per_s: runs, chunks_per_s: Bench.median(runs)}}
          end)

        Bench.log(
          "across nodes: remote ÷ local chunks/s " <>
            "#{Float.round(stream["remote"].chunks_per_s / stream["local"].chunks_per_s, 2)}×"
        )

        %{
          pool_size: cross_size,
          peer_start_ms: peer_s * 1000,
          peer_pool_listed_ms: pool_s * 1000,
          unary: unary,
          stream_small: stream
        }
      after
        :ok = Snakepit.Pool.stop(local_pid)
        Bench.Nodes.stop_peer(peer, peer_os_pids)
      end
    after
      Snakepit.Test.Distribution.stop(dist)
    end
  else
    %{}
  end

# Telemetry: unary echo on a pool of 4, with `:telemetry` present and no
# handler attached ("none"), against a handler on the call span's start and
# stop events that counts calls and sums durations, as a metrics reporter
# does ("handler"). Rounds alternate, attaching and detaching the handler.
# `:telemetry` here is bench/lib/telemetry.ex (the library cannot be had):
# Snakepit decides when it starts whether `:telemetry` is there, so the
# bench asks it again once its stand-in is loaded, and restores that after.
telemetry =
  if "telemetry" in sections do
    tel_pool = :bench_telemetry
    # More rounds than elsewhere: the difference sought is a few percent.
    tel_rounds = 8
    {:ok, tel_pid} = Snakepit.Pool.start_link(snakepit_opts.(tel_pool, 4, :tcp))
    :telemetry.start()
    true = Snakepit.Telemetry.setup()
    counter = :counters.new(2, [:write_concurrency])
    events = [[:snakepit, :call, :start], [:snakepit, :call, :stop]]

    handler = fn
      [:snakepit, :call, :stop], %{duration: duration}, _meta, counter ->
        :counters.add(counter, 1, 1)
        :counters.add(counter, 2, duration)

      _event, _measurements, _meta, _counter ->
        :ok
    end

    call = fn -> {:ok, _} = Snakepit.execute("echo", payload, pool: tel_pool) end

    # One round of `system`: the handler attached for it, detached after.
    round = fn system, c, calls ->
      if system == "handler",
        do: for(e <- events, do: :ok = :telemetry.attach({:bench, e}, e, handler, counter))

      try do
        Bench.load(call, c, calls)
      after
        for e <- events, do: :ok = :telemetry.detach({:bench, e})
      end
    end

    try do
      Bench.load(call, 8, warmup)

      unary =
        for {c, calls} <- [{1, 8_000}, {64, 51_200}],
            runs =
              for(
                _ <- 1..tel_rounds,
                s <- ["none", "handler"],
                do: {s, round.(s, c, div(calls, tel_rounds))}
              ),
            system <- ["none", "handler"] do
          r =
            runs
            |> Enum.filter(&(elem(&1, 0) == system))
            |> Enum.map(&elem(&1, 1))
            |> Bench.merge()

          Bench.log(
            "telemetry #{system} c=#{c}: p50 #{Float.round(r.p50_us, 1)} µs, " <>
              "#{round(r.calls_per_s)} calls/s"
          )

          r |> Map.delete(:samples) |> Map.merge(%{system: system, concurrency: c})
        end

      handled = :counters.get(counter, 1)
      Bench.log("telemetry: the handler saw #{handled} calls")

      # The events' own cost, without the noise of a whole call: a call's
      # span (start and stop events) with an empty body, with the handler
      # and without.
      span = fn ->
        Snakepit.Telemetry.span([:snakepit, :call], %{pool: tel_pool, tool: "echo"}, fn ->
          {{:ok, 1}, %{}}
        end)
      end

      span_us = fn ->
        n = 200_000
        t0 = Bench.now()
        for _ <- 1..n, do: span.()
        Bench.us(Bench.now() - t0) / n
      end

      bare_us = span_us.()
      for(e <- events, do: :ok = :telemetry.attach({:bench, e}, e, handler, counter))
      handled_us = span_us.()
      for(e <- events, do: :ok = :telemetry.detach({:bench, e}))

      Bench.log(
        "telemetry: a call's span costs #{Float.round(bare_us, 2)} µs without a handler, " <>
          "#{Float.round(handled_us, 2)} µs with it"
      )

      %{
        pool_size: 4,
        rounds: tel_rounds,
        unary: unary,
        handled_calls: handled,
        span_us: %{none: bare_us, handler: handled_us}
      }
    after
      Snakepit.Telemetry.setup()
      :ok = Snakepit.Pool.stop(tel_pid)
    end
  else
    %{}
  end

results = %{
  unary: [],
  binary_1mib: %{},
  stream_small: %{},
  stream_ref: %{},
  stream_1gib: %{},
  memory: %{},
  startup: %{},
  outside_unary: [],
  outside_stream: %{},
  cross_node: %{},
  telemetry: %{}
}

results =
  Enum.reduce(if("main" in sections, do: [1, 2, 4], else: []), results, fn size, results ->
    Bench.log(
      "pool size #{size}: starting Snakepit pools (TCP, Unix socket), grpcio pool and #{size} ports"
    )

    sp = :"bench_snakepit_#{size}"
    up = :"bench_snakepit_unix_#{size}"
    gp = :"bench_grpcio_#{size}"
    {:ok, sp_pid} = Snakepit.Pool.start_link(snakepit_opts.(sp, size, :tcp))
    {:ok, up_pid} = Snakepit.Pool.start_link(snakepit_opts.(up, size, :unix))
    {:ok, gp_pid} = Snakepit.Pool.start_link(grpcio_opts.(gp, size))
    {port_pids, group} = start_ports.(size)

    systems = [
      {"snakepit", fn -> {:ok, _} = Snakepit.execute("echo", payload, pool: sp) end},
      {"snakepit_unix", fn -> {:ok, _} = Snakepit.execute("echo", payload, pool: up) end},
      {"grpcio_worker", fn -> {:ok, _} = Snakepit.execute("echo", payload, pool: gp) end},
      {"port", fn -> %{} = Bench.PortEcho.echo(Bench.PortEcho.pick(group), payload) end}
    ]

    # Every system returns the payload unchanged.
    for pool <- [sp, up, gp], do: {:ok, ^payload} = Snakepit.execute("echo", payload, pool: pool)
    ^payload = Bench.PortEcho.echo(Bench.PortEcho.pick(group), payload)

    for {_, fun} <- systems, do: Bench.load(fun, 8, warmup)

    # Rounds alternate between the systems, so that all of them share the
    # machine's changing conditions; each system's rounds are then merged.
    unary =
      for c <- [1, 8, 64], {system, r} <- interleaved.(systems, c, calls_for[c]) do
        Bench.log(
          "unary #{system} pool=#{size} c=#{c}: p50 #{Float.round(r.p50_us, 1)} µs, " <>
            "p99 #{Float.round(r.p99_us, 1)} µs, #{round(r.calls_per_s)} calls/s"
        )

        Map.merge(r, %{system: system, pool_size: size, concurrency: c})
      end

    results = %{results | unary: results.unary ++ unary}

    results =
      if size in [1, 2] do
        Bench.log("outside clients through the bridge: unary echo, pool #{size}")
        %{results | outside_unary: results.outside_unary ++ outside_unary.(sp, size)}
      else
        results
      end

    results =
      if size == 1 do
        Bench.log("1 MiB binary round trips")

        for pool <- [sp, up, gp] do
          {:ok, ^blob} =
            Snakepit.execute("echo_bytes", %{}, pool: pool, binary_parameters: %{"data" => blob})
        end

        [port] = port_pids
        ^blob = Bench.PortEcho.echo_bytes(port, blob)

        echo_bytes = fn pool ->
          fn ->
            {:ok, _} =
              Snakepit.execute("echo_bytes", %{}, pool: pool, binary_parameters: %{"data" => blob})
          end
        end

        bin_systems = [
          {"snakepit", echo_bytes.(sp)},
          {"snakepit_unix", echo_bytes.(up)},
          {"grpcio_worker", echo_bytes.(gp)},
          {"port", fn -> <<_::binary-size(mib)>> = Bench.PortEcho.echo_bytes(port, blob) end}
        ]

        binary =
          Map.new(bin_systems, fn {system, fun} ->
            Bench.load(fun, 1, 10)
            r = Bench.load(fun, 1, 100) |> Map.delete(:samples)
            Bench.log("1 MiB round trip #{system}: p50 #{Float.round(r.p50_us / 1000, 2)} ms")
            {system, r}
          end)

        # Streams run 3 times per system, alternating; figures are medians.
        stream_pools = [{"snakepit", sp}, {"snakepit_unix", up}, {"grpcio_worker", gp}]
        stream_runs = 3

        median_runs = fn runs, name, unit ->
          runs
          |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
          |> Map.new(fn {system, values} ->
            Bench.log("#{name} #{system}: #{Enum.map_join(values, ", ", &round/1)} #{unit}")
            {system, %{runs: values, median: Bench.median(values)}}
          end)
        end

        Bench.log("streaming 100 000 small chunks")

        for {_, pool} <- stream_pools do
          {_, _, _} = Bench.stream_count("stream_numbers", %{count: 1_000}, "number", pool: pool)
        end

        small =
          for _ <- 1..stream_runs, {system, pool} <- stream_pools do
            {s, n, _} =
              Bench.stream_count("stream_numbers", %{count: 100_000}, "number", pool: pool)

            100_000 = n
            {system, n / s}
          end
          |> median_runs.("100k chunks", "chunks/s")
          |> Map.new(fn {system, r} ->
            {system, %{chunks: 100_000, runs_chunks_per_s: r.runs, chunks_per_s: r.median}}
          end)

        # A StreamRef over 100 000 small items through Enum.to_list, in
        # batches, against one round trip per item (seed 003's stream_next
        # protocol: `prefetch: 1`) over 10 000 items, alternating.
        Bench.log("StreamRef: 100 000 items in batches, 10 000 one round trip per item")

        stream_ref = fn pool, count, prefetch ->
          {:ok, range} = Snakepit.call("builtins", "range", [count], pool: pool)
          {:ok, iterator} = Snakepit.call("builtins", "iter", [range], pool: pool)
          :ok = Snakepit.release(range)
          %{iterator | prefetch: prefetch}
        end

        ref_systems = [
          {"batched", fn pool -> stream_ref.(pool, 100_000, 512) end, 100_000},
          {"per_item", fn pool -> stream_ref.(pool, 10_000, 1) end, 10_000}
        ]

        stream_refs =
          for _ <- 1..stream_runs,
              {system, make, count} <- ref_systems,
              {transport, pool} <- [{"snakepit", sp}, {"snakepit_unix", up}] do
            iterator = make.(pool)
            {s, list} = Bench.time(fn -> Enum.to_list(iterator) end)
            ^count = length(list)
            {"#{system}_#{transport}", count / s}
          end
          |> median_runs.("StreamRef", "items/s")
          |> Map.new(fn {system, r} ->
            {system, %{runs_items_per_s: r.runs, items_per_s: r.median}}
          end)

        Bench.log(
          "outside clients through the bridge: #{outside_paced} chunks one per " <>
            "#{outside_every_us} µs, then #{outside_chunks} as fast as they go"
        )

        outside_stream_systems =
          [
            {"in_beam",
             fn ->
               %{
                 "paced" => Bench.stream_stamped(sp, outside_paced, outside_every_us),
                 "saturated" => Bench.stream_stamped(sp, outside_chunks, 0)
               }
             end}
          ] ++
            for {system, arg} <- outside_systems do
              {system,
               fn ->
                 outside.([
                   "stream",
                   arg,
                   sp,
                   outside_chunks,
                   1_000,
                   outside_paced,
                   outside_every_us
                 ])
               end}
            end

        Bench.stream_stamped(sp, 1_000, 0)

        outside_stream =
          for _ <- 1..stream_runs, {system, run} <- outside_stream_systems do
            %{"paced" => paced, "saturated" => saturated} = r = run.()
            ^outside_chunks = saturated["chunks"]
            ^outside_paced = paced["chunks"]

            Bench.log(
              "outside stream #{system}: #{round(saturated["chunks_per_s"])} chunks/s, " <>
                "gap p50 #{Float.round(saturated["gap_us"]["p50"], 1)} µs, " <>
                "age p50 #{round(saturated["age_us"]["p50"])} µs (paced: " <>
                "#{round(paced["age_us"]["p50"])} µs)"
            )

            {system, r}
          end
          |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
          |> Map.new(fn {system, runs} ->
            median = fn kind, get -> runs |> Enum.map(&get.(&1[kind])) |> Bench.median() end

            {system,
             %{
               chunks: outside_chunks,
               paced_chunks: outside_paced,
               paced_every_us: outside_every_us,
               runs: runs,
               chunks_per_s: median.("saturated", & &1["chunks_per_s"]),
               producer_chunks_per_s: median.("saturated", & &1["producer_chunks_per_s"]),
               cpu_us_per_chunk: median.("saturated", &(&1["cpu_busy_us"] / &1["chunks"])),
               peak_ahead: median.("saturated", & &1["peak_ahead"]),
               gap_p50_us: median.("saturated", & &1["gap_us"]["p50"]),
               gap_p99_us: median.("saturated", & &1["gap_us"]["p99"]),
               age_p50_us: median.("saturated", & &1["age_us"]["p50"]),
               age_p99_us: median.("saturated", & &1["age_us"]["p99"]),
               paced_age_p50_us: median.("paced", & &1["age_us"]["p50"]),
               paced_age_p99_us: median.("paced", & &1["age_us"]["p99"])
             }}
          end)

        Bench.log("streaming 1 GiB in 1 MiB chunks")

        gib =
          for _ <- 1..stream_runs, {system, pool} <- stream_pools do
            args = %{count: 1024, size: mib}

            {s, n, bytes} =
              Bench.stream_count("stream_bytes", args, "data", pool: pool, raw_binaries: true)

            1024 = n
            {system, bytes / 1.0e6 / s}
          end
          |> median_runs.("1 GiB", "MB/s")
          |> Map.new(fn {system, r} ->
            {system,
             %{chunks: 1024, bytes: 1024 * mib, runs_mb_per_s: r.runs, mb_per_s: r.median}}
          end)

        Bench.log("memory while 1 GiB streams into a slow callback (2 ms per chunk)")

        memory = %{
          "snakepit" => Bench.slow_stream_memory(sp, false),
          "snakepit_gc_per_chunk" => Bench.slow_stream_memory(sp, true),
          "grpcio_worker" => Bench.slow_stream_memory(gp, false)
        }

        for {k, v} <- memory do
          Bench.log(
            "memory #{k}: RSS +#{Float.round(v.rss_growth_mib, 1)} MiB, " <>
              ":erlang.memory +#{Float.round(v.growth_mib, 1)} MiB"
          )
        end

        %{
          results
          | binary_1mib: binary,
            stream_small: small,
            stream_ref: stream_refs,
            stream_1gib: gib,
            memory: memory,
            outside_stream: outside_stream
        }
      else
        results
      end

    for pid <- [sp_pid, up_pid, gp_pid], do: :ok = Snakepit.Pool.stop(pid)
    Enum.each(port_pids, &Bench.PortEcho.stop/1)
    results
  end)

startup =
  if "main" in sections do
    Bench.log("time from pool start to 4 workers ready (3 runs each)")

    startup_runs = fn start ->
      for i <- 1..3 do
        {s, stop} = start.(i)
        stop.()
        s * 1000
      end
    end

    # A pool of 4 started with `opts_of.(name)`, timed until start_link returns.
    start_pool = fn prefix, opts_of ->
      startup_runs.(fn i ->
        {s, {:ok, pid}} =
          Bench.time(fn -> Snakepit.Pool.start_link(opts_of.(:"bench_start_#{prefix}#{i}")) end)

        {s, fn -> Snakepit.Pool.stop(pid) end}
      end)
    end

    startup = %{
      "snakepit" => start_pool.("s", &snakepit_opts.(&1, 4, :tcp)),
      "snakepit_unix" => start_pool.("u", &snakepit_opts.(&1, 4, :unix)),
      "grpcio_worker" => start_pool.("g", &grpcio_opts.(&1, 4)),
      # Ports are "ready" when each has answered one echo.
      "port" =>
        startup_runs.(fn _ ->
          {s, pids} =
            Bench.time(fn ->
              {pids, _} = start_ports.(4)
              Enum.each(pids, fn pid -> %{} = Bench.PortEcho.echo(pid, payload) end)
              pids
            end)

          {s, fn -> Enum.each(pids, &Bench.PortEcho.stop/1) end}
        end)
    }

    startup =
      Map.new(startup, fn {k, ms} ->
        {k, %{runs_ms: ms, median_ms: Bench.median(ms), min_ms: Enum.min(ms)}}
      end)

    for {k, v} <- startup, do: Bench.log("startup #{k}: median #{Float.round(v.median_ms, 1)} ms")
    startup
  else
    %{}
  end

meta = %{
  elixir: System.version(),
  otp: System.otp_release(),
  schedulers: System.schedulers_online(),
  loadavg_at_start: load_at_start,
  total_seconds: Bench.secs(Bench.now() - Process.get(:t0)),
  payload: payload,
  payload_json_bytes: IO.iodata_length(Bench.JSON.encode(payload))
}

raw =
  Map.put(
    %{results | startup: startup, cross_node: cross_node, telemetry: telemetry},
    :meta,
    meta
  )

out = Path.join(root, "_build/bench-raw.json")
File.write!(out, Bench.JSON.encode(raw))
Bench.log("wrote #{out}")
