// Held rows (`holds_rows` in common.wgsl), `Hold::F32`: a lane holds up to
// HOLD vectors of its row as f32 registers (`held_t`), and may keep
// exp(x - m) there in place of x (`HOLD_KEEPS_F32`): 32 registers a lane,
// 32768 columns on 1024 lanes. Every storage type (16-bit rows on CPU
// adapters, where packing cost more than it saved).
const HOLD: u32 = 8u;
alias held_t = vec_t;
const HOLD_KEEPS_F32: bool = true;
fn hold(v: vec_t) -> held_t { return v; }
fn unhold(h: held_t) -> vec_t { return h; }
