import Config

if config_env() == :test do
  config :snakepit, pools: [[name: :default, size: 2]]
  config :logger, level: :warning
end
