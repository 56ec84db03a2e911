defmodule Snakepit.Session.Info do
  @moduledoc """
  A session of the node's session store.

    * `:id`, `:metadata` (given at creation);
    * `:ttl` — seconds of disuse after which the session expires (every
      request naming the session renews it); `:created_at`, `:last_used_at`,
      `:expires_at` — UTC `DateTime`s;
    * `:variable_count`, `:watcher_count` — its variables, and the live
      watches of them (from Elixir and Python).
  """

  @type t :: %__MODULE__{
          id: String.t(),
          created_at: DateTime.t(),
          last_used_at: DateTime.t(),
          ttl: pos_integer(),
          expires_at: DateTime.t(),
          metadata: %{String.t() => String.t()},
          variable_count: non_neg_integer(),
          watcher_count: non_neg_integer()
        }

  defstruct [
    :id,
    :created_at,
    :last_used_at,
    :ttl,
    :expires_at,
    metadata: %{},
    variable_count: 0,
    watcher_count: 0
  ]
end
