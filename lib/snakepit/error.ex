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
      * `:transport` — gRPC failed between the VM and the worker.
    * `:message` — a readable sentence.
    * `:details` — a map with more facts, e.g. `:reason` (an atom such as
      `:invalid_argument`, `:unknown_pool`), `:path` (where in the arguments a
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

  @known_reasons ~w(invalid_argument invalid_binary_parameter timeout idle_timeout not_ready worker_exited message_too_large too_deep duplicate_key number_out_of_range invalid_json)

  # Refusals by the worker's dispatcher, by their type name.
  @worker_refusals %{
    "UnknownTool" => :unknown_tool,
    "InvalidArguments" => :invalid_arguments,
    "StreamingTool" => :streaming_tool,
    "TooDeep" => :too_deep
  }

  @doc false
  # Converts the NIF's `{category, message, details}` failure term.
  def from_native(failure, extra \\ %{})

  def from_native({:validation, message, %{python_type: type} = details}, extra) do
    details = details |> Map.drop([:python_type, :traceback]) |> Map.put(:reason, refusal(type))
    from_native({:validation, message, details}, extra)
  end

  def from_native({category, message, details}, extra) do
    {python_type, details} = Map.pop(details, :python_type)
    {traceback, details} = Map.pop(details, :traceback)

    details =
      details
      |> Map.update(:reason, nil, &reason/1)
      |> Map.update(:tool_stopped, nil, &(&1 == "true"))
      |> Map.reject(fn {_key, value} -> value in [nil, ""] end)
      |> Map.merge(extra)

    %__MODULE__{
      category: category,
      message: message,
      details: details,
      python_type: blank_to_nil(python_type),
      python_traceback: blank_to_nil(traceback)
    }
  end

  defp reason(reason) when reason in @known_reasons, do: String.to_atom(reason)
  defp reason(reason), do: reason

  defp refusal(type), do: Map.get(@worker_refusals, type, :refused)

  defp blank_to_nil(""), do: nil
  defp blank_to_nil(value), do: value
end
