// Scalar variant (`VecWidth::Scalar`): one f32 per load, any row length.
const VW: u32 = 1u;
alias vec_t = f32;
alias vec_u = u32;
const LANE: vec_u = 0u;
fn hmax(v: f32) -> f32 { return v; }
fn hsum(v: f32) -> f32 { return v; }
fn lane(v: f32, k: u32) -> f32 { return v; }
