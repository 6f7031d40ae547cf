"""Op variants written once, used by both the elastic supernet (`nas.supernet`, with sliced weights) and the
plain modules of `nas.static_model` (with their own weights).

One module per op family, each depending on torch alone and on no other module here, so that an export can
ship a copy of each beside its `model.py` (as `ops_<family>.py`; see `static_model.OP_FILES`):

    attention   attention kinds (a registry: `get_attention(name)`), relative position bias, depthwise conv on V
    conv        squeeze-excite and ElasticViT's projection shortcut (average pool + 1x1 conv)
"""

OP_MODULES = ("attention", "conv")
