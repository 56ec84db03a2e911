defmodule Snakepit.Session.Update do
  @moduledoc """
  One change delivered to a watcher (`Snakepit.Session.watch/3`) as
  `{:snakepit_variable, ref, %Snakepit.Session.Update{}}`.

    * `:type` — `:initial_value` (the value when the watch started, asked
      with `include_initial: true`), `:value_change` or `:deleted`.
    * `:name`, `:value`, `:version` — the variable after the change (for
      `:deleted`: its last state); `:variable` has all of it.
    * `:old_value` — the value before a `:value_change` (`nil` otherwise).
    * `:source` (`:elixir`, `:python`, `:client`), `:metadata` and
      `:timestamp` (UTC `DateTime`) — who changed it, with what metadata, when.

  Per variable, updates arrive in version order.
  """

  @type t :: %__MODULE__{
          type: :initial_value | :value_change | :deleted,
          name: String.t(),
          value: term(),
          old_value: term(),
          version: pos_integer(),
          source: :elixir | :python | :client,
          metadata: %{String.t() => String.t()},
          timestamp: DateTime.t(),
          variable: Snakepit.Session.Variable.t()
        }

  defstruct [
    :type,
    :name,
    :value,
    :old_value,
    :version,
    :source,
    :timestamp,
    :variable,
    metadata: %{}
  ]
end
