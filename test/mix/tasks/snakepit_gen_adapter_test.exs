defmodule Mix.Tasks.Snakepit.Gen.AdapterTest do
  # The generated adapter passes its generated tests and serves calls from a
  # pool. Not async: it swaps Mix's shell.
  use ExUnit.Case, async: false

  alias Snakepit.Session
  alias Snakepit.Test.TestPython

  if reason = TestPython.skip_reason("pytest") do
    @moduletag skip: reason
  end

  setup do
    Mix.shell(Mix.Shell.Process)
    on_exit(fn -> Mix.shell(Mix.Shell.IO) end)
    dir = Path.join(System.tmp_dir!(), "snakepit_gen_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm_rf!(dir) end)
    %{dir: dir}
  end

  defp gen(args), do: Mix.Tasks.Snakepit.Gen.Adapter.run(args)

  defp shell_lines do
    receive do
      {:mix_shell, :info, [line]} -> [line | shell_lines()]
    after
      0 -> []
    end
  end

  test "writes an adapter and its tests, which pass, and prints the config", %{dir: dir} do
    gen(["gen_app.text.WordsAdapter", "--path", dir])

    assert File.exists?(Path.join(dir, "gen_app/text.py"))
    assert File.read!(Path.join(dir, "gen_app/__init__.py")) == ""
    test_file = Path.join(dir, "tests/test_gen_app_text.py")
    said = Enum.join(shell_lines(), "\n")
    assert said =~ "* creating #{test_file}"

    assert said =~
             ~s(config :snakepit, pools: [[name: :words, adapter: "gen_app.text.WordsAdapter")

    snakepit_python = Path.join(:code.priv_dir(:snakepit), "python")

    {out, status} =
      System.cmd(TestPython.path(), ["-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
        env: [{"PYTHONPATH", snakepit_python}],
        stderr_to_stdout: true
      )

    assert status == 0, out
    assert out =~ "4 passed"
  end

  test "the adapter serves calls from a pool: plain, streaming, session variable", %{dir: dir} do
    gen(["gen_app.text.WordsAdapter", "--path", dir])
    pool = :"gen_words_#{System.unique_integer([:positive])}"

    start_supervised!(
      {Snakepit.Pool,
       name: pool, size: 1, adapter: "gen_app.text.WordsAdapter", python_path: [dir]}
    )

    assert {:ok, %{"words" => 2}} =
             Snakepit.execute("count_words", %{text: "hello world"}, pool: pool)

    me = self()

    assert :ok =
             Snakepit.execute_stream("stream_words", %{text: "a b c"}, &send(me, &1), pool: pool)

    words = for _ <- 1..3, do: assert_received(%{"word" => word}) && word
    assert words == ["a", "b", "c"]

    session = "gen_#{System.unique_integer([:positive])}"

    assert {:ok, %{"total" => 2}} =
             Snakepit.execute_in_session(session, "add_to_total", %{text: "a b"}, pool: pool)

    assert {:ok, %{"total" => 5}} =
             Snakepit.execute_in_session(session, "add_to_total", %{text: "c d e"}, pool: pool)

    assert {:ok, %{value: 5}} = Session.get_variable(session, "word_total")

    assert {:error, %Snakepit.Error{category: :python, python_type: "ValueError"}} =
             Snakepit.execute("add_to_total", %{text: "x"}, pool: pool)

    Session.delete(session)
  end

  test "refuses to overwrite without --force, and names that are not module.Class", %{dir: dir} do
    gen(["gen_app.text.WordsAdapter", "--path", dir])
    adapter = Path.join(dir, "gen_app/text.py")
    File.write!(adapter, "# mine")

    assert_raise Mix.Error, ~r/exists; pass --force/, fn ->
      gen(["gen_app.text.WordsAdapter", "--path", dir])
    end

    assert File.read!(adapter) == "# mine"
    gen(["gen_app.text.WordsAdapter", "--path", dir, "--force"])
    assert File.read!(adapter) =~ "class WordsAdapter(BaseAdapter)"

    for bad <- [["Adapter"], ["my-app.Adapter"], ["a..B"], ["a.B", "c.D"], []] do
      assert_raise Mix.Error, fn -> gen(bad ++ ["--path", dir]) end
    end
  end
end
