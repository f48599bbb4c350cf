"""Checkpoint loading: PyTorchVideo, PySlowFast (.pyth and Caffe2 .pkl) and MMAction2 weights.

files.py reads files without running code, formats.py holds the four key layouts, loading.py matches a
state dict to a model, detection.py reads the architecture and the preset a checkpoint implies.

``load_checkpoint(model, path_or_state_dict, format="auto")`` loads into a reference model
(``slowfast_reference.SlowFast``); ``export_state_dict(model, format)`` is its inverse, writing the
model's weights in a foreign key layout. Every key goes through one canonical address (stage,
pathway, block, layer, parameter), rendered per format, so loading and exporting share one table.

Layouts (the frameworks' own module trees):

- pytorchvideo: the reference's own keys (``blocks.0.multipathway_blocks.0.conv.weight``).
- pyslowfast: ``s1.pathway0_stem.conv.weight``, ``s1_fuse.conv_f2s.weight``, ``s2.pathway1_res0.
  branch2.a_bn.running_mean``, ``head.projection.weight``; ``{"model_state": ...}`` in .pyth files.
- pyslowfast-caffe2: Detectron blob names (``conv1_w``, ``t_res2_0_branch2a_bn_riv``,
  ``t_pool1_subsample_w``, ``pred_w``) in a pickled ``{"blobs": {name: ndarray}}``; names go to
  PySlowFast's keys by the rules of PySlowFast's ``c2_model_loading.get_name_convert_func``.
- mmaction2: ``backbone.slow_path.layer1.0.conv1.conv.weight``, ``backbone.slow_path.conv1_lateral.
  conv.weight``, ``cls_head.fc_cls.weight``; its head concatenates the Fast features before the
  Slow ones, so the fc columns are permuted here.
"""
# The public names of the former single module, re-exported (and the helpers other modules import).
from .files import CheckpointError, read_checkpoint_file, unwrap_container  # noqa: F401
from .formats import (FORMAT_CHOICES, FORMATS, Slot, caffe2_to_pyslowfast, detect_format,  # noqa: F401
                      export_state_dict, read_state_dict)
from .loading import load_checkpoint
from .detection import ArchInfo, _num_classes, detect_arch, preset_of, to_reference_model  # noqa: F401

_FORMAT_CHOICES = FORMAT_CHOICES

__all__ = [
    "FORMATS", "ArchInfo", "CheckpointError", "caffe2_to_pyslowfast", "detect_arch", "detect_format",
    "export_state_dict", "load_checkpoint", "preset_of", "read_checkpoint_file", "read_state_dict", "to_reference_model",
]

