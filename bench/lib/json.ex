defmodule Bench.JSON do
  @moduledoc """
  A tiny JSON encoder and decoder for the port baseline and the results file.

  The project has no JSON library on the Elixir side (JSON is done in Rust,
  inside the NIF), and no Hex packages may be used, so the hand-written port
  baseline brings its own, as a developer without Jason would. It handles
  maps, lists, strings (with the common escapes), integers, floats, booleans
  and nil: enough for the echo payload and the benchmark results.
  """

  @doc "Encodes a term as JSON iodata."
  def encode(nil), do: "null"
  def encode(true), do: "true"
  def encode(false), do: "false"
  def encode(n) when is_integer(n), do: Integer.to_string(n)
  def encode(f) when is_float(f), do: Float.to_string(f)
  def encode(a) when is_atom(a), do: encode_string(Atom.to_string(a))
  def encode(s) when is_binary(s), do: encode_string(s)

  def encode(list) when is_list(list) do
    [?[, list |> Enum.map(&encode/1) |> Enum.intersperse(?,), ?]]
  end

  def encode(map) when is_map(map) do
    pairs =
      Enum.map(map, fn {k, v} ->
        key = if is_atom(k), do: Atom.to_string(k), else: k
        [encode_string(key), ?:, encode(v)]
      end)

    [?{, Enum.intersperse(pairs, ?,), ?}]
  end

  defp encode_string(s) do
    if :binary.match(s, ["\"", "\\", "\n", "\r", "\t"]) == :nomatch and
         not String.contains?(s, Enum.map(0..31, &<<&1>>)) do
      [?", s, ?"]
    else
      [?", escape(s, []), ?"]
    end
  end

  defp escape(<<>>, acc), do: Enum.reverse(acc)
  defp escape(<<?", rest::binary>>, acc), do: escape(rest, ["\\\"" | acc])
  defp escape(<<?\\, rest::binary>>, acc), do: escape(rest, ["\\\\" | acc])
  defp escape(<<?\n, rest::binary>>, acc), do: escape(rest, ["\\n" | acc])
  defp escape(<<?\r, rest::binary>>, acc), do: escape(rest, ["\\r" | acc])
  defp escape(<<?\t, rest::binary>>, acc), do: escape(rest, ["\\t" | acc])

  defp escape(<<c, rest::binary>>, acc) when c < 32,
    do: escape(rest, [:io_lib.format("\\u~4.16.0b", [c]) | acc])

  defp escape(<<c, rest::binary>>, acc), do: escape(rest, [c | acc])

  @doc "Decodes JSON text into maps (string keys), lists and scalars."
  def decode!(text) when is_binary(text) do
    {value, rest} = value(skip(text))

    case skip(rest) do
      "" ->
        value

      other ->
        raise ArgumentError,
              "trailing JSON: #{inspect(binary_part(other, 0, min(20, byte_size(other))))}"
    end
  end

  defp skip(<<c, rest::binary>>) when c in [?\s, ?\n, ?\r, ?\t], do: skip(rest)
  defp skip(text), do: text

  defp value(<<?{, rest::binary>>), do: object(skip(rest), %{})
  defp value(<<?[, rest::binary>>), do: array(skip(rest), [])
  defp value(<<?", rest::binary>>), do: string(rest, [])
  defp value(<<"true", rest::binary>>), do: {true, rest}
  defp value(<<"false", rest::binary>>), do: {false, rest}
  defp value(<<"null", rest::binary>>), do: {nil, rest}
  defp value(text), do: number(text)

  defp object(<<?}, rest::binary>>, acc), do: {acc, rest}

  defp object(<<?", rest::binary>>, acc) do
    {key, rest} = string(rest, [])
    <<?:, rest::binary>> = skip(rest)
    {val, rest} = value(skip(rest))
    acc = Map.put(acc, key, val)

    case skip(rest) do
      <<?,, rest::binary>> -> object(skip(rest), acc)
      <<?}, rest::binary>> -> {acc, rest}
    end
  end

  defp array(<<?], rest::binary>>, []), do: {[], rest}

  defp array(text, acc) do
    {val, rest} = value(text)

    case skip(rest) do
      <<?,, rest::binary>> -> array(skip(rest), [val | acc])
      <<?], rest::binary>> -> {Enum.reverse([val | acc]), rest}
    end
  end

  defp string(<<?", rest::binary>>, acc), do: {IO.iodata_to_binary(Enum.reverse(acc)), rest}
  defp string(<<?\\, ?n, rest::binary>>, acc), do: string(rest, [?\n | acc])
  defp string(<<?\\, ?r, rest::binary>>, acc), do: string(rest, [?\r | acc])
  defp string(<<?\\, ?t, rest::binary>>, acc), do: string(rest, [?\t | acc])
  defp string(<<?\\, ?b, rest::binary>>, acc), do: string(rest, [?\b | acc])
  defp string(<<?\\, ?f, rest::binary>>, acc), do: string(rest, [?\f | acc])
  defp string(<<?\\, ?/, rest::binary>>, acc), do: string(rest, [?/ | acc])
  defp string(<<?\\, ?", rest::binary>>, acc), do: string(rest, [?" | acc])
  defp string(<<?\\, ?\\, rest::binary>>, acc), do: string(rest, [?\\ | acc])

  defp string(<<?\\, ?u, hex::binary-size(4), rest::binary>>, acc),
    do: string(rest, [<<String.to_integer(hex, 16)::utf8>> | acc])

  defp string(text, acc) do
    # Copy the run of plain characters at once.
    {pos, _} = :binary.match(text, ["\"", "\\"])
    <<plain::binary-size(pos), rest::binary>> = text
    string(rest, [plain | acc])
  end

  defp number(text) do
    {len, float?} = number_length(text, 0, false)
    <<digits::binary-size(len), rest::binary>> = text

    value =
      if float?,
        do: digits |> normalize_float() |> String.to_float(),
        else: String.to_integer(digits)

    {value, rest}
  end

  defp number_length(<<c, rest::binary>>, n, float?) when c in ?0..?9 or c == ?-,
    do: number_length(rest, n + 1, float?)

  defp number_length(<<c, rest::binary>>, n, _) when c in [?., ?e, ?E, ?+],
    do: number_length(rest, n + 1, true)

  defp number_length(_, 0, _), do: raise(ArgumentError, "invalid JSON value")
  defp number_length(_, n, float?), do: {n, float?}

  # "1e5" and "1E5" are JSON but not Elixir float syntax.
  defp normalize_float(digits) do
    digits = String.downcase(digits)

    if String.contains?(digits, ".") do
      digits
    else
      String.replace(digits, "e", ".0e")
    end
  end
end
