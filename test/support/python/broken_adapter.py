"""An adapter module that fails while being imported."""

raise RuntimeError("this adapter is broken on purpose")
