defmodule Snakepit.Options do
  @moduledoc false
  # One declarative schema per option set (pool, call, stream, bridge): it
  # gives the defaults, the validation and the docs table, so an option is
  # written once.
  #
  # A schema is a keyword list of option => spec, in the order of the docs
  # table. A spec takes:
  #
  #   * `:type` (required), one of
  #       `:pos_integer`, `:non_neg_integer` (both take `:max`),
  #       `:timeout` (`:infinity` or a positive integer of at most
  #       `Snakepit.Limits.max_timeout/0` ms), `:boolean`, `:string`,
  #       `:name` (an atom other than nil, true and false), `{:in, choices}`,
  #       `{:custom, fun}`: `fun.(value)` returns `{:ok, value}` (which may
  #       normalise it), `{:error, text}` (text completes "<option> ...") or
  #       `{:error, %Snakepit.Error{}}` (returned as it is);
  #   * `:default`: the value when the option is not given, checked like a
  #     given one. An option whose default is `nil` is unset by default and
  #     also accepts `nil`;
  #   * `:default_by`: a function of no arguments computing the default at
  #     validation time (then `:doc_default` is required);
  #   * `:required`: `true` when the option has no default;
  #   * `:doc`: its meaning, markdown, for the table;
  #   * `:doc_default`: markdown shown as the default instead of the value.

  alias Snakepit.{Error, Limits}

  @type spec :: keyword()
  @type schema :: [{atom(), spec()}]

  @doc """
  Validates `opts` against `schema`: `{:ok, map}` with every option of the
  schema (defaults filled in) or a `:validation` error whose details name the
  option. `subject` prefixes the messages ("pool" gives "pool :size must
  be ..."); `nil` for none.
  """
  @spec validate(term(), schema(), String.t() | nil) :: {:ok, map()} | {:error, Error.t()}
  def validate(opts, schema, subject) when is_list(opts) do
    if Keyword.keyword?(opts) do
      with :ok <- known_once(opts, schema, subject), do: values(schema, opts, subject, %{})
    else
      not_keyword(opts, subject)
    end
  end

  def validate(opts, _schema, subject), do: not_keyword(opts, subject)

  @doc "The options of `schema` with their static defaults (`nil` where none)."
  @spec defaults(schema()) :: keyword()
  def defaults(schema), do: Enum.map(schema, fn {key, spec} -> {key, spec[:default]} end)

  @doc "The markdown table of `schema`: option, default and meaning."
  @spec docs(schema()) :: String.t()
  def docs(schema) do
    rows =
      Enum.map(schema, fn {key, spec} ->
        "| `#{inspect(key)}` | #{doc_default(spec)} | #{spec |> Keyword.fetch!(:doc) |> one_line()} |\n"
      end)

    IO.iodata_to_binary(["| option | default | meaning |\n|---|---|---|\n" | rows])
    |> String.trim_trailing()
  end

  defp known_once([], _schema, _subject), do: :ok

  defp known_once(opts, schema, subject) do
    keys = Keyword.keys(opts)
    unknown = keys |> Enum.reject(&Keyword.has_key?(schema, &1)) |> Enum.uniq()

    case {unknown, Enum.uniq(keys -- Enum.uniq(keys))} do
      {[], []} ->
        :ok

      {[], [first | _] = twice} ->
        invalid(first, "#{noun(subject)} given twice: #{inspect(twice)}")

      {[first | _], _} ->
        invalid(
          first,
          "unknown #{noun(subject)} #{inspect(unknown)}; known: #{inspect(Keyword.keys(schema))}"
        )
    end
  end

  defp values([], _opts, _subject, acc), do: {:ok, acc}

  defp values([{key, spec} | schema], opts, subject, acc) do
    case value(key, spec, opts, subject) do
      {:ok, value} -> values(schema, opts, subject, Map.put(acc, key, value))
      {:error, _} = error -> error
    end
  end

  defp value(key, spec, opts, subject) do
    case Keyword.fetch(opts, key) do
      {:ok, value} ->
        check(key, spec, value, subject)

      :error ->
        cond do
          spec[:required] -> invalid(key, "#{label(key, subject)} is required")
          fun = spec[:default_by] -> check(key, spec, fun.(), subject)
          true -> check(key, spec, spec[:default], subject)
        end
    end
  end

  defp check(key, spec, nil, subject) do
    if spec[:default] == nil and !spec[:required] and !spec[:default_by],
      do: {:ok, nil},
      else: check_type(key, spec, nil, subject)
  end

  defp check(key, spec, value, subject), do: check_type(key, spec, value, subject)

  defp check_type(key, spec, value, subject) do
    case Keyword.fetch!(spec, :type) do
      {:custom, fun} ->
        case fun.(value) do
          {:ok, value} -> {:ok, value}
          {:error, %Error{} = error} -> {:error, error}
          {:error, text} -> invalid(key, "#{label(key, subject)} #{text}")
        end

      type ->
        if valid?(type, value, spec[:max]),
          do: {:ok, value},
          else:
            invalid(
              key,
              "#{label(key, subject)} must be #{describe(type, spec[:max])}, got: #{inspect(value, limit: 10)}"
            )
    end
  end

  defp valid?(:pos_integer, n, max), do: is_integer(n) and n > 0 and at_most?(n, max)
  defp valid?(:non_neg_integer, n, max), do: is_integer(n) and n >= 0 and at_most?(n, max)
  defp valid?(:timeout, :infinity, _max), do: true
  defp valid?(:timeout, n, _max), do: valid?(:pos_integer, n, Limits.max_timeout())
  defp valid?(:boolean, value, _max), do: is_boolean(value)
  defp valid?(:string, value, _max), do: is_binary(value)
  defp valid?(:name, value, _max), do: is_atom(value) and value not in [nil, true, false]
  defp valid?({:in, choices}, value, _max), do: value in choices

  defp at_most?(_n, nil), do: true
  defp at_most?(n, max), do: n <= max

  defp describe(:pos_integer, max), do: "a positive integer" <> of_at_most(max)
  defp describe(:non_neg_integer, max), do: "a non-negative integer" <> of_at_most(max)

  defp describe(:timeout, _max),
    do: ":infinity or a positive integer of at most #{Limits.max_timeout()} ms"

  defp describe(:boolean, _max), do: "a boolean"
  defp describe(:string, _max), do: "a string"
  defp describe(:name, _max), do: "an atom other than nil, true and false"
  defp describe({:in, choices}, _max), do: "one of #{inspect(choices)}"

  defp of_at_most(nil), do: ""
  defp of_at_most(max), do: " of at most #{max}"

  defp label(key, nil), do: inspect(key)
  defp label(key, subject), do: "#{subject} #{inspect(key)}"

  defp noun(nil), do: "options"
  defp noun(subject), do: "#{subject} options"

  defp not_keyword(opts, subject) do
    {:error,
     Error.new(
       :validation,
       "#{noun(subject)} must be a keyword list, got: #{inspect(opts, limit: 10)}",
       %{reason: :invalid_argument}
     )}
  end

  defp invalid(key, message),
    do: {:error, Error.new(:validation, message, %{reason: :invalid_argument, option: key})}

  defp doc_default(spec) do
    cond do
      text = spec[:doc_default] -> text
      spec[:default_by] -> raise ArgumentError, "an option with :default_by needs a :doc_default"
      spec[:required] -> "required"
      true -> "`#{format(spec[:default])}`" <> in_mib(spec[:default])
    end
  end

  @mib 1024 * 1024

  defp in_mib(n) when is_integer(n) and n >= @mib and rem(n, @mib) == 0,
    do: " (#{div(n, @mib)} MiB)"

  defp in_mib(_value), do: ""

  defp format(n) when is_integer(n) and n >= 1_000 do
    n
    |> Integer.to_string()
    |> String.reverse()
    |> String.replace(~r/(\d{3})(?=\d)/, "\\1_")
    |> String.reverse()
  end

  defp format(value), do: inspect(value)

  defp one_line(text), do: text |> String.trim() |> String.replace(~r/\s*\n\s*/, " ")
end
