defmodule Mix.Tasks.Snakepit.DoctorTest do
  # Not async: it swaps Mix's shell and the :pools configuration.
  use ExUnit.Case, async: false

  alias Mix.Tasks.Snakepit.Doctor

  setup do
    Mix.shell(Mix.Shell.Process)
    pools = Application.get_env(:snakepit, :pools)

    on_exit(fn ->
      Mix.shell(Mix.Shell.IO)
      Application.put_env(:snakepit, :pools, pools)
    end)
  end

  defp shell(kind) do
    receive do
      {:mix_shell, ^kind, [line]} -> [line | shell(kind)]
    after
      0 -> []
    end
  end

  defp doctor(pools) do
    Application.put_env(:snakepit, :pools, pools)
    result = Doctor.run([])
    {result, Enum.join(shell(:info), "\n"), Enum.join(shell(:error), "\n")}
  end

  test "passes on this machine, with the test pools' configuration" do
    {:ok, info, errors} = doctor([[name: :default, size: 2]])
    assert errors == ""
    assert info =~ "ok      the Snakepit NIF loads"
    assert info =~ "ok      pool :default: the bundled extension imports"

    assert info =~
             "ok      pool :default: adapter snakepit_bridge.adapters.showcase.ShowcaseAdapter starts a worker"

    assert info =~ ~r/All \d+ checks passed/
  end

  test "fails, with the fix, when an adapter is missing" do
    assert_raise Mix.Error, ~r/1 of \d+ checks failed/, fn ->
      doctor([[name: :default], [name: :broken, adapter: "no_such_module_here.Adapter"]])
    end

    errors = Enum.join(shell(:error), "\n")
    assert errors =~ "FAILED  pool :broken: adapter no_such_module_here.Adapter starts a worker"
    assert errors =~ "no_such_module_here"
    assert errors =~ "fix: make the adapter importable"
    # The other pool passed.
    assert Enum.join(shell(:info), "\n") =~ "ok      pool :default: adapter"
  end

  test "fails, with the fix, when python points nowhere" do
    assert_raise Mix.Error, ~r/checks failed/, fn ->
      doctor([[name: :nowhere, python: "/nonexistent/bin/python3"]])
    end

    errors = Enum.join(shell(:error), "\n")
    assert errors =~ "FAILED"
    assert errors =~ "/nonexistent/bin/python3"
    assert errors =~ "fix:"
  end
end
