defmodule Snakepit.Native do
  @moduledoc false
  # NIF stubs only; public modules wrap these and carry the docs.
  # Messages are sent to `owner` as `{tag, message}` (see native/snakepit_nif).

  @on_load :load_nif

  def load_nif do
    path = :filename.join(:code.priv_dir(:snakepit), ~c"native/libsnakepit_nif")

    # Loading fails while the library is not built yet (first compile); the
    # stubs then raise, and Snakepit.Application reports it clearly.
    _ = :erlang.load_nif(path, 0)
    :ok
  end

  # worker_*
  def worker_spawn(_spec, _owner, _tag), do: :erlang.nif_error(:nif_not_loaded)
  def worker_stop(_worker, _grace_ms), do: :erlang.nif_error(:nif_not_loaded)
  def worker_describe(_worker, _owner, _tag, _timeout_ms), do: :erlang.nif_error(:nif_not_loaded)
  def worker_drain(_worker), do: :erlang.nif_error(:nif_not_loaded)
  def worker_load(_worker), do: :erlang.nif_error(:nif_not_loaded)
  def output_ack(_ack), do: :erlang.nif_error(:nif_not_loaded)

  # lease_*
  def lease_acquire(_worker), do: :erlang.nif_error(:nif_not_loaded)
  def lease_release(_lease), do: :erlang.nif_error(:nif_not_loaded)

  # call_* (`Snakepit.Call` builds the request maps)
  def call_unary(_request), do: :erlang.nif_error(:nif_not_loaded)

  def call_cancel(_call), do: :erlang.nif_error(:nif_not_loaded)

  # stream_*
  def stream_open(_request), do: :erlang.nif_error(:nif_not_loaded)

  def stream_ack(_stream, _count), do: :erlang.nif_error(:nif_not_loaded)
  def stream_cancel(_stream), do: :erlang.nif_error(:nif_not_loaded)

  # duplex_* (the stream_* functions apply to duplex calls too)
  def duplex_open(_request), do: :erlang.nif_error(:nif_not_loaded)

  def duplex_send(_stream, _items), do: :erlang.nif_error(:nif_not_loaded)
  def duplex_close(_stream), do: :erlang.nif_error(:nif_not_loaded)

  # bridge_*
  def bridge_start(_options), do: :erlang.nif_error(:nif_not_loaded)
  def bridge_adopt(_bridge, _owner), do: :erlang.nif_error(:nif_not_loaded)
  def bridge_stop(_bridge), do: :erlang.nif_error(:nif_not_loaded)
  def bridge_token, do: :erlang.nif_error(:nif_not_loaded)
  def bridge_set_token(_token), do: :erlang.nif_error(:nif_not_loaded)
  def bridge_tools_new, do: :erlang.nif_error(:nif_not_loaded)
  def bridge_set_tools(_catalog, _tools), do: :erlang.nif_error(:nif_not_loaded)
  def bridge_tool_reply(_call, _outcome), do: :erlang.nif_error(:nif_not_loaded)
  def bridge_checkout_reply(_call, _outcome), do: :erlang.nif_error(:nif_not_loaded)
  def bridge_pools_reply(_call, _pools), do: :erlang.nif_error(:nif_not_loaded)

  # session_* and var_* (the store of the bridge given first)
  def session_create(_bridge, _id, _ttl_s, _metadata), do: :erlang.nif_error(:nif_not_loaded)
  def session_touch(_bridge, _id), do: :erlang.nif_error(:nif_not_loaded)
  def session_delete(_bridge, _id), do: :erlang.nif_error(:nif_not_loaded)
  def session_list(_bridge), do: :erlang.nif_error(:nif_not_loaded)

  def var_register(_bridge, _session, _registration), do: :erlang.nif_error(:nif_not_loaded)

  def var_get(_bridge, _session, _identifier), do: :erlang.nif_error(:nif_not_loaded)
  def var_get_many(_bridge, _session, _identifiers), do: :erlang.nif_error(:nif_not_loaded)
  def var_set(_bridge, _session, _write, _metadata), do: :erlang.nif_error(:nif_not_loaded)
  def var_set_many(_bridge, _session, _writes, _metadata), do: :erlang.nif_error(:nif_not_loaded)
  def var_list(_bridge, _session, _pattern), do: :erlang.nif_error(:nif_not_loaded)
  def var_delete(_bridge, _session, _identifier), do: :erlang.nif_error(:nif_not_loaded)

  def var_watch(_bridge, _session, _options, _owner, _tag), do: :erlang.nif_error(:nif_not_loaded)

  def var_unwatch(_handle), do: :erlang.nif_error(:nif_not_loaded)
  def var_watch_counted(_handle, _question, _length), do: :erlang.nif_error(:nif_not_loaded)

  # The numbers snakepit_core shares with Snakepit.Limits (a test compares).
  def limits, do: :erlang.nif_error(:nif_not_loaded)

  # Returns true once the library is loaded; the stub answers false.
  def loaded?, do: false
end
