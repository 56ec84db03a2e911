defmodule Snakepit.Test.Terms do
  @moduledoc """
  Random Elixir terms that JSON can carry, for property tests (no Hex: a
  small generator over `:rand`, seeded so that a failure can be replayed).

  `term/2` builds a term of every kind that crosses to Python (integers of
  any size, doubles of any bit pattern, atoms, UTF-8 strings, lists, tuples,
  keyword lists, maps with atom, string and integer keys); `expected/1` is
  what it looks like after a round trip through Python (atoms as strings,
  tuples as lists, keyword lists and maps as string-keyed maps).
  """

  import Bitwise

  @doc "Seeds this process's generator; returns the seed to print on failure."
  @spec seed(integer()) :: {atom(), integer()}
  def seed(n) do
    :rand.seed(:exsss, {n, n * 7 + 1, n * 13 + 2})
    {:exsss, n}
  end

  @doc "A random term at most `depth` containers deep."
  @spec term(non_neg_integer()) :: term()
  def term(depth) do
    if depth == 0, do: scalar(), else: pick([&scalar/0, fn -> container(depth) end])
  end

  @doc "A random double: any finite bit pattern, or one of the extremes."
  @spec double() :: float()
  def double do
    case :rand.uniform(10) do
      1 -> Enum.random(extremes())
      _ -> random_double()
    end
  end

  @doc "Doubles at the edges: zeros, the smallest subnormal, the largest finite."
  @spec extremes() :: [float()]
  def extremes do
    [
      0.0,
      -0.0,
      5.0e-324,
      -5.0e-324,
      2.2250738585072009e-308,
      2.2250738585072014e-308,
      1.7976931348623157e308,
      -1.7976931348623157e308,
      0.1,
      1.0e16,
      9_007_199_254_740_993.0
    ]
  end

  defp random_double do
    <<bits::64>> = :rand.bytes(8)

    case <<bits::64>> do
      <<f::float-64>> -> f
      # NaN and infinities have no Elixir form.
      _ -> random_double()
    end
  end

  @doc """
  Values no entry point should accept as they are: wrong types, non-UTF-8
  and huge binaries, improper lists, colliding keys, structs, pids,
  functions, integers beyond 64 bits, and values nested far deeper than
  allowed.
  """
  @spec hostile() :: [term()]
  def hostile do
    [
      nil,
      true,
      :atom,
      -1,
      0,
      1 <<< 32,
      1 <<< 64,
      1 <<< 70,
      -(1 <<< 70),
      1.5,
      -0.0,
      "",
      <<255, 0>>,
      String.duplicate("é", 300),
      :binary.copy(<<0>>, 100_000),
      [],
      [1 | 2],
      [{:a, 1} | :b],
      [a: 1, a: 2],
      {},
      {:ok, 1},
      {1, 2, 3},
      %{},
      %{a: [1 | 2]},
      %{:a => 1, "a" => 2},
      %URI{},
      self(),
      make_ref(),
      fn -> :ok end,
      fn _, _ -> :ok end,
      Enum.reduce(1..100_000, 0, fn _, acc -> [acc] end),
      Enum.reduce(1..10_000, 0, fn _, acc -> %{"a" => acc} end)
    ]
  end

  @doc "The term as it comes back from Python."
  @spec expected(term()) :: term()
  def expected(value) when is_boolean(value) or is_nil(value), do: value
  def expected(value) when is_atom(value), do: Atom.to_string(value)
  def expected(value) when is_tuple(value), do: value |> Tuple.to_list() |> Enum.map(&expected/1)

  def expected([{key, _} | _] = list) when is_atom(key) do
    if Keyword.keyword?(list), do: expected(Map.new(list)), else: Enum.map(list, &expected/1)
  end

  def expected(list) when is_list(list), do: Enum.map(list, &expected/1)
  def expected(map) when is_map(map), do: Map.new(map, fn {k, v} -> {key(k), expected(v)} end)
  def expected(value), do: value

  defp key(k) when is_binary(k), do: k
  defp key(k) when is_atom(k), do: Atom.to_string(k)
  defp key(k) when is_integer(k), do: Integer.to_string(k)

  defp pick(generators), do: Enum.random(generators).()

  defp scalar do
    pick([
      fn -> Enum.random([true, false, nil]) end,
      fn -> :rand.uniform(2001) - 1001 end,
      fn -> :rand.uniform(1 <<< 64) - (1 <<< 63) end,
      fn -> (:rand.uniform(2) * 2 - 3) * (1 <<< :rand.uniform(2000)) + :rand.uniform(1000) end,
      &double/0,
      fn -> Enum.random([:ok, :error, :"with space", :ünïcode]) end,
      &string/0
    ])
  end

  defp string do
    length = :rand.uniform(12) - 1

    for _ <- 1..length//1, into: "" do
      Enum.random([
        fn -> <<Enum.random(32..126)>> end,
        fn -> <<Enum.random([0, 1, 9, 10, 13, 31, 34, 92, 127])::utf8>> end,
        fn -> <<Enum.random(0xA0..0xD7FF)::utf8>> end,
        fn -> <<Enum.random(0xE000..0xFFFD)::utf8>> end,
        fn -> <<Enum.random(0x10000..0x10FFFF)::utf8>> end
      ]).()
    end
  end

  defp container(depth) do
    size = :rand.uniform(5) - 1
    child = fn -> term(depth - 1) end

    pick([
      fn -> plain_list(for _ <- 1..size//1, do: child.()) end,
      fn -> List.to_tuple(for _ <- 1..size//1, do: child.()) end,
      fn -> for key <- keys(size + 1, :atom), do: {key, child.()} end,
      fn -> Map.new(keys(size, :any), fn key -> {key, child.()} end) end
    ])
  end

  # A list that happens to look like a keyword list would become an object
  # (and could repeat a key): keep it a list.
  defp plain_list([_ | _] = list) do
    if Keyword.keyword?(list), do: list ++ [0], else: list
  end

  defp plain_list([]), do: []

  # Keys whose JSON texts are all different (colliding keys are refused).
  defp keys(count, kind) do
    Enum.map(1..count//1, fn i ->
      case {kind, rem(i, 3)} do
        {:atom, _} -> :"k#{i}"
        {:any, 0} -> :"k#{i}"
        {:any, 1} -> "k#{i}" <> string()
        {:any, 2} -> i
      end
    end)
  end
end
