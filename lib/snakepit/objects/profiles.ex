defmodule Snakepit.Objects.Profiles do
  @moduledoc false
  # Named option sets of the universal call (`config :snakepit, :profiles`)
  # and the profile of each library (`config :snakepit, :library_profiles`,
  # by top-level package name). The options themselves are validated with
  # the call's, so an error names the option.

  alias Snakepit.Error

  @doc false
  # The options of profile `name`, else of `library`'s profile, else none.
  @spec options(atom() | nil, String.t() | nil) :: {:ok, keyword()} | {:error, Error.t()}
  def options(nil, library) do
    case Map.get(library_profiles(), library) do
      nil -> {:ok, []}
      name -> options(name, nil)
    end
  end

  def options(name, _library) do
    profiles = Application.get_env(:snakepit, :profiles, %{})

    case profiles_map(profiles)[name] do
      opts when is_list(opts) ->
        if Keyword.keyword?(opts),
          do: {:ok, Keyword.delete(opts, :profile)},
          else: bad_profile(name, opts)

      nil ->
        {:error,
         Error.new(
           :validation,
           "no profile #{inspect(name)} in config :snakepit, :profiles (known: #{inspect(Map.keys(profiles_map(profiles)))})",
           %{reason: :invalid_argument, option: :profile}
         )}

      other ->
        bad_profile(name, other)
    end
  end

  defp library_profiles do
    case Application.get_env(:snakepit, :library_profiles, %{}) do
      map when is_map(map) -> map
      list when is_list(list) -> if Keyword.keyword?(list), do: Map.new(list), else: %{}
      _other -> %{}
    end
  end

  defp profiles_map(map) when is_map(map), do: map

  defp profiles_map(list) when is_list(list),
    do: if(Keyword.keyword?(list), do: Map.new(list), else: %{})

  defp profiles_map(_other), do: %{}

  defp bad_profile(name, value) do
    {:error,
     Error.new(
       :validation,
       "profile #{inspect(name)} must be a keyword list of call options, got: #{inspect(value, limit: 5)}",
       %{reason: :invalid_argument, option: :profile}
     )}
  end
end
