"""fastmaml: fast, vectorized Model-Agnostic Meta-Learning on PyTorch.

    from fastmaml import MAML, TaskBatch
    learner = MAML(model, F.cross_entropy, inner_lr=0.4, inner_steps=1)
    learner(batch).loss.backward()      # meta-gradient of a task batch
"""

from fastmaml.core.batchnorm import BatchStatNorm, convert_batchnorm
from fastmaml.core.maml import MAML, AdaptationCurve, MAMLConfig, MAMLPlusPlus, MetaOutput, Recompute, accuracy
from fastmaml.core.step_size import Fixed, PerElement, PerLayerStep
from fastmaml.core.batch import TaskBatch, TaskBatching

__version__ = "0.1.0"
__all__ = ["MAML", "MAMLConfig", "MetaOutput", "AdaptationCurve", "TaskBatch", "TaskBatching", "accuracy",
           "BatchStatNorm", "convert_batchnorm", "Fixed", "PerLayerStep", "PerElement", "MAMLPlusPlus", "Recompute"]
