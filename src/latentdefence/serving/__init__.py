"""Guard a model in production: one artifact, a Python wrapper, an HTTP service, an audit log of flagged inputs.

```python
from latentdefence.serving import GuardedClassifier
guard = GuardedClassifier.load("guard.safetensors")
out = guard.predict(images)      # .label .probabilities .is_adversarial .credibility .nonconformity .per_layer
```
The service: `latentdefence serve guard.safetensors` (docs/serving.md); `serving.app.create_app` builds it in Python.
"""

from .audit import AuditLog, FlaggedRecord, PostgresAuditLog, SQLiteAuditLog, image_sha256, open_audit_log
from .batching import MicroBatcher
from .guarded import GuardedClassifier, GuardedPrediction, InputError

__all__ = ["AuditLog", "FlaggedRecord", "GuardedClassifier", "GuardedPrediction", "InputError", "MicroBatcher",
           "PostgresAuditLog", "SQLiteAuditLog", "image_sha256", "open_audit_log"]
