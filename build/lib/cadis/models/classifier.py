"""Off-the-shelf classifiers from timm or transformers, wrapped to take [0, 1] images.

The wrapper only: specs are parsed and models loaded and saved in `loading.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cadis.errors import CadisError


class ImageClassifier(torch.nn.Module):
    """Maps [0, 1] images of any size and channel count to logits.

    It adapts channels (grey ↔ RGB), resizes (bicubic, antialiased) to the model's input size,
    and normalises with the model's own mean/std.
    """

    def __init__(self, model: torch.nn.Module, input_size: tuple[int, int, int], mean, std,
                 classes: list[str] | None = None, spec: str = "", logits_attr: str | None = None):
        super().__init__()
        self.model = model
        self.input_size = tuple(int(s) for s in input_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.classes = classes or [str(i) for i in range(self.num_classes_from_model())]
        self.spec = spec
        self.logits_attr = logits_attr  # transformers outputs carry logits in an attribute

    def num_classes_from_model(self) -> int:
        return int(getattr(self.model, "num_classes", 0) or self.model.config.num_labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = self.input_size
        if x.shape[1] != c:
            if x.shape[1] == 1:
                x = x.expand(-1, c, -1, -1)
            elif c == 1:
                x = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
            else:
                raise CadisError(f"Cannot map {x.shape[1]} channels to the classifier's {c}.")
        if tuple(x.shape[-2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(self.preprocess(x))
        return getattr(out, self.logits_attr) if self.logits_attr else out
