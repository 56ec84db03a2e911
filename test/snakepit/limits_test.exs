defmodule Snakepit.LimitsTest do
  # The numbers that Rust, Elixir and Python each write once must agree.
  use ExUnit.Case, async: true

  alias Snakepit.{Limits, Native, Python}

  # What the Python package holds, read by the interpreter the workers use.
  defp python_limits do
    script = """
    import sys
    from snakepit_bridge import limits
    print(limits.PROTOCOL_VERSION)
    print(limits.MAX_DEPTH)
    print(getattr(sys.int_info, "default_max_str_digits", 0))
    """

    {output, 0} =
      System.cmd(System.find_executable("python3"), ["-c", script], env: Python.worker_env([], []))

    [protocol_version, max_depth, int_digits] = String.split(output, "\n", trim: true)

    %{
      protocol_version: protocol_version,
      max_depth: String.to_integer(max_depth),
      cpython_int_digits: String.to_integer(int_digits)
    }
  end

  test "the Elixir side agrees with snakepit_core" do
    rust = Native.limits()

    assert Limits.max_message_bytes() == rust.max_message_bytes
    assert Limits.max_depth() == rust.max_depth
    assert Limits.max_integer_digits() == rust.max_integer_digits
  end

  test "the Python package agrees with snakepit_core" do
    rust = Native.limits()
    python = python_limits()

    assert python.protocol_version == rust.protocol_version
    assert python.max_depth == rust.max_depth

    # The Rust limit mirrors CPython's default int/str conversion limit
    # (CPython 3.11 and later; older ones have none and report 0).
    if python.cpython_int_digits > 0 do
      assert python.cpython_int_digits == rust.max_integer_digits
    end
  end
end
