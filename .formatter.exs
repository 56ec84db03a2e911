[
  inputs: [
    "{mix,.formatter}.exs",
    "mix/**/*.ex",
    "{config,lib,test,examples,bench}/**/*.{ex,exs}"
  ]
]
