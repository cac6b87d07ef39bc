// f32 matrices (`Storage::F32`): loads and stores are `vec_t` as they are.
alias mat_t = vec_t;
fn unpack_mat(w: mat_t) -> vec_t { return w; }
fn pack_mat(v: vec_t) -> mat_t { return v; }
