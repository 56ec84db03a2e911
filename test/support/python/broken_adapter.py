"""An adapter module that fails while being imported, after logging why."""

import logging

logging.getLogger("broken_adapter").error("the model file is missing")

raise RuntimeError("this adapter is broken on purpose")
