"""Which tensors of the student are widened in the DT, decided on its traced graph.

gpd.md §1: every Linear/Conv/BN/LN is widened r× on input and output channels, "except the first
layer's input and the last layer's output". The model input is not widened; a dense layer
(Linear, Conv, attention) whose output reaches the model output through parameter-free
operations only is a "last" layer (its output is not widened); every other dense layer widens its
output. Widening then flows through the graph.

A widened tensor holds, along its *channel axis*, r contiguous copies of the student's tensor
(scaled 1/r). The plan follows that axis through every operation (flatten, transpose, indexing,
concatenation…) and refuses, naming the operation and module, anything that would mix the
replicas with another axis, cut the channel axis, or is not homogeneous (adding a constant).
Layers check that they act on the channel axis (a Linear on the last axis, a Conv or BatchNorm
on axis 1). Tensors the model owns outside any layer (a ViT's cls_token and pos_embed, fetched
with get_attr) are "free": they are widened along the axis they meet widened activations on.

Ranks: a Conv's output rank is its kernel's (batched input assumed); a Linear keeps its input's
rank, which may be unknown when it reads the raw input. Operations whose effect on the channel
axis depends on an unknown rank are refused.

The plan is an abstract interpreter over the torch.fx graph, one idea per module:

- `values`: what the plan knows about a value (an activation's rank and channel axis, a shape,
  a free tensor) and the `Refused` signal;
- `channel_axis`: where the channel axis goes through views, reductions and indexing;
- `graph`: tracing the model (layers with a rule are leaves), last layers, naming nodes;
- `layer_types`: what the plan knows about layer types (pass-through, the axis and rank a
  layer acts on) and the check, before tracing, that every layer is covered;
- `state`: every node's value so far and the decisions on free tensors;
- `elementwise_ops`, `shape_ops`: the handlers of functions and methods; `operations` lists
  them by operation name and dispatches;
- `walk`: the pass over the graph, node kind by node kind, and `analyse`, the entry point.
"""
