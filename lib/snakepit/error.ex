defmodule Snakepit.Error do
  @moduledoc """
  The one error type of Snakepit: every public function returns
  `{:error, %Snakepit.Error{}}` on failure.

  Fields:

    * `:category` — where it went wrong:
      * `:validation` — bad input, refused before anything was sent (or by the
        worker: unknown tool, bad arguments);
      * `:pool` — no worker could be had (unknown pool, no ready worker);
      * `:worker` — the worker process failed (did not start, crashed);
      * `:timeout` — the call ran out of time;
      * `:python` — the tool raised an exception;
      * `:transport` — gRPC failed between the VM and the worker, or the
        node a call ran on went down (`details.reason: :node_down`, with
        `details.node`).
    * `:message` — a readable sentence.
    * `:details` — a map with more facts, e.g. `:reason` (an atom such as
      `:invalid_argument`, `:unknown_tool`, `:unknown_pool`), `:path` (where in the arguments a
      bad value is), `:worker_id`; a unary `:timeout` also has
      `:tool_stopped` (whether the worker saw the tool stop: `false` for a
      tool blocked outside Python, whose worker is recycled if it is still
      running after the pool's `:cancel_grace`).
    * `:python_type` and `:python_traceback` — for Python exceptions.

  ## Example

      iex> {:error, error} = Snakepit.execute("add", %{a: self(), b: 1})
      iex> error.category
      :validation
      iex> error.details.path
      "args[\\"a\\"]"
  """

  @type category :: :validation | :pool | :worker | :timeout | :python | :transport

  @type t :: %__MODULE__{
          category: category(),
          message: String.t(),
          details: map(),
          python_type: String.t() | nil,
          python_traceback: String.t() | nil
        }

  defexception category: :transport,
               message: "unknown error",
               details: %{},
               python_type: nil,
               python_traceback: nil

  @impl true
  def message(%__MODULE__{category: category, message: message}),
    do: "[#{category}] #{message}"

  @doc "Builds an error of `category` with `message` and optional `details`."
  @spec new(category(), String.t(), map()) :: t()
  def new(category, message, details \\ %{}),
    do: %__MODULE__{category: category, message: message, details: details}

  @doc false
  # Wraps the NIF's `{category, message, details}` failure term, whose
  # details are final (`:reason` is an atom, `:tool_stopped` a boolean).
  def from_native({category, message, details}, extra \\ %{}) do
    {python_type, details} = Map.pop(details, :python_type)
    {traceback, details} = Map.pop(details, :traceback)

    %__MODULE__{
      category: category,
      message: message,
      details: Map.merge(details, extra),
      python_type: python_type,
      python_traceback: traceback
    }
  end
end
