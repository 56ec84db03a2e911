"""Small, self-contained ML-style tools for the streaming examples.

Pure Python and no downloads: a toy image "classifier" for batch inference and
a logistic regression trained by gradient descent on generated data.
"""

import math
import random
import time

from snakepit_bridge.base_adapter import BaseAdapter, tool
from snakepit_bridge import StreamChunk

LABELS = ["cat", "dog", "bird", "fish"]


class MLExamplesAdapter(BaseAdapter):
    """Tools that report progress while they work."""

    @tool(description="Classify items one by one, streaming each result", supports_streaming=True)
    def batch_inference(self, batch_items: list, delay_ms: int = 150):
        """Yield one prediction per item, then a summary as the final chunk."""
        started = time.monotonic()
        counts = {}
        for index, item in enumerate(batch_items):
            time.sleep(delay_ms / 1000)  # stands in for a model's forward pass
            digest = sum(ord(c) * (i + 1) for i, c in enumerate(item))
            label = LABELS[digest % len(LABELS)]
            confidence = 70 + digest % 30
            counts[label] = counts.get(label, 0) + 1
            yield {"item": item, "index": index, "prediction": label, "confidence": confidence}
        yield StreamChunk(
            data={
                "total_processed": len(batch_items),
                "predictions": counts,
                "seconds": round(time.monotonic() - started, 3),
            },
            is_final=True,
        )

    @tool(description="Train a logistic regression, streaming each epoch", supports_streaming=True)
    def train_model(self, epochs: int = 10, samples: int = 400, learning_rate: float = 0.5, seed: int = 7):
        """Fit y = sigmoid(w·x + b) on two noisy clusters; yield loss and accuracy per epoch."""
        rng = random.Random(seed)
        data = []
        for _ in range(samples):
            label = rng.random() < 0.5
            centre = 1.0 if label else -1.0
            data.append(((rng.gauss(centre, 1.0), rng.gauss(centre, 1.0)), 1.0 if label else 0.0))
        w1 = w2 = b = 0.0
        for epoch in range(1, epochs + 1):
            grad1 = grad2 = grad_b = loss = 0.0
            correct = 0
            for (x1, x2), y in data:
                p = 1.0 / (1.0 + math.exp(-(w1 * x1 + w2 * x2 + b)))
                loss -= y * math.log(p + 1e-12) + (1 - y) * math.log(1 - p + 1e-12)
                correct += (p >= 0.5) == (y == 1.0)
                grad1 += (p - y) * x1
                grad2 += (p - y) * x2
                grad_b += p - y
            n = len(data)
            w1 -= learning_rate * grad1 / n
            w2 -= learning_rate * grad2 / n
            b -= learning_rate * grad_b / n
            yield {"type": "progress", "epoch": epoch, "loss": round(loss / n, 4), "accuracy": round(correct / n, 4)}
        yield {"type": "complete", "weights": [round(w1, 4), round(w2, 4)], "bias": round(b, 4), "is_final": True}
