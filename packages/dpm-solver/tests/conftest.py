"""Small tensors: one intra-op thread avoids oversubscription on shared CPU machines."""

import torch

torch.set_num_threads(1)
