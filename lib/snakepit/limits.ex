defmodule Snakepit.Limits do
  @moduledoc false
  # Numbers the Elixir side shares with the Rust core and the Python package,
  # each written once here. test/snakepit/limits_test.exs checks that they
  # agree with `snakepit_core` (through `Snakepit.Native.limits/0`) and with
  # `snakepit_bridge.limits`.

  # Largest single message either side sends or accepts, by default
  # (`snakepit_core::client::MAX_MESSAGE_BYTES`).
  @max_message_bytes 256 * 1024 * 1024

  # Deepest nesting of lists, maps and tuples that crosses to Python and back
  # (`snakepit_core::json::MAX_DEPTH`, `snakepit_bridge.limits.MAX_DEPTH`).
  @max_depth 128

  # Most decimal digits of an integer that crosses, CPython's default limit
  # for int/str conversion (`snakepit_core::json::MAX_INTEGER_DIGITS`).
  @max_integer_digits 4_300

  # Longest finite timeout of a call, in ms. Waits end in `receive ... after`,
  # whose limit is 2^32 - 1 ms, with a margin added (`Snakepit.Call`).
  @max_timeout 4_000_000_000

  def max_message_bytes, do: @max_message_bytes
  def max_depth, do: @max_depth
  def max_integer_digits, do: @max_integer_digits
  def max_timeout, do: @max_timeout
end
