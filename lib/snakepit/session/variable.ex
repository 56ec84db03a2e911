defmodule Snakepit.Session.Variable do
  @moduledoc """
  A session variable as the node's session store holds it.

    * `:id` — unique in the node (`"var_42"`); a variable registered again
      under the same name gets a new id.
    * `:name`, `:type` (`:float`, `:integer`, `:string`, `:boolean`,
      `:choice`, `:module`, `:embedding`, `:tensor` or `:json`), `:value`
      (decoded JSON: maps have string keys), `:constraints` (a map with string
      keys, `%{}` when none) and `:metadata` (given at registration).
    * `:version` — 1 at registration, +1 per write.
    * `:source` — who wrote the current value: `:elixir`, `:python` or
      `:client` (a program outside the pools); `:update_metadata` — the
      metadata of that write.
    * `:created_at`, `:updated_at` — UTC `DateTime`s.
  """

  @type var_type ::
          :float
          | :integer
          | :string
          | :boolean
          | :choice
          | :module
          | :embedding
          | :tensor
          | :json

  @type t :: %__MODULE__{
          id: String.t(),
          name: String.t(),
          type: var_type(),
          value: term(),
          constraints: map(),
          metadata: %{String.t() => String.t()},
          version: pos_integer(),
          source: :elixir | :python | :client,
          update_metadata: %{String.t() => String.t()},
          created_at: DateTime.t(),
          updated_at: DateTime.t()
        }

  defstruct [
    :id,
    :name,
    :type,
    :value,
    :version,
    :source,
    :created_at,
    :updated_at,
    constraints: %{},
    metadata: %{},
    update_metadata: %{}
  ]
end
