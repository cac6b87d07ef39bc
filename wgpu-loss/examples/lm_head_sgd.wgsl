// Plain SGD for examples/lm_head.rs: param -= lr * grad, element-wise.
struct Step { lr: f32, len: u32 }
@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;

@compute @workgroup_size(256)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x < step.len) {
        param[gid.x] = param[gid.x] - step.lr * grad[gid.x];
    }
}
