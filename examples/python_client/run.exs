# Starts this node (the :snakepit application and its default pool) and runs
# a Python client example against it, outside the pools:
#
#     mix run examples/python_client/run.exs simple_execution.py
#
# The script gets the bridge's address and token in SNAKEPIT_ADDRESS and
# SNAKEPIT_TOKEN, and the bundled package on its PYTHONPATH (a program of
# your own would `pip install priv/python` instead).

[script | _] = System.argv() ++ ["simple_execution.py"]
python = System.get_env("SNAKEPIT_EXAMPLE_PYTHON", "python3")

{output, status} =
  System.cmd(python, [Path.join(__DIR__, script)],
    env: [
      {"SNAKEPIT_ADDRESS", Snakepit.Bridge.address()},
      {"SNAKEPIT_TOKEN", Snakepit.Bridge.token()},
      {"PYTHONPATH", Snakepit.Python.package_dir()}
    ],
    stderr_to_stdout: true
  )

IO.write(output)
if status != 0, do: raise("#{script} exited with status #{status}")
