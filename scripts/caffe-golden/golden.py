"""What the golden-number scripts share: how a blob is written down."""
import numpy as np


def shortest(v):
    """The shortest decimal that reads back as the same float32."""
    return float(str(np.float32(v)))


def array(a):
    """A small blob whole: its shape and every value."""
    a = np.asarray(a, dtype=np.float32)
    return {"shape": list(a.shape), "data": [shortest(v) for v in a.ravel()]}


def fingerprint(a, samples):
    """A large blob in brief: its size, sum and sum of squares (in f64), and
    the values at `samples` evenly spaced positions."""
    a = np.asarray(a, dtype=np.float64).ravel()
    picks = np.linspace(0, a.size - 1, samples).round().astype(int)
    return {"size": int(a.size), "sum": float(a.sum()), "sum_sq": float((a * a).sum()),
            "positions": [int(p) for p in picks], "values": [shortest(a[p]) for p in picks]}
