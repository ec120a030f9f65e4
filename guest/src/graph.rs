//! The graph surgery the fusing swaps share (`maxpool`, `hardswish`): rewiring a node's inputs,
//! then dropping the nodes no one reads any more.

use tract_onnx::prelude::*;

/// Makes `inputs` node `id`'s inputs, keeping every outlet's list of readers true: `id` leaves
/// the readers of its old inputs and joins those of its new ones.
pub fn rewire(model: &mut TypedModel, id: usize, inputs: &[OutletId]) {
    for old in std::mem::take(&mut model.nodes[id].inputs) {
        model.nodes[old.node].outputs[old.slot].successors.retain(|s| s.node != id);
    }
    for (slot, outlet) in inputs.iter().enumerate() {
        model.nodes[outlet.node].outputs[outlet.slot].successors.push(InletId::new(id, slot));
    }
    model.nodes[id].inputs = inputs.to_vec();
}

/// `model` without the nodes that no longer reach an output, after a rewiring left some behind;
/// a model tract cannot compact is returned as it was (the left nodes are then never run).
pub fn compacted(model: TypedModel) -> TypedModel {
    let mut compacted = model.clone();
    if compacted.compact().is_ok() { compacted } else { model }
}
