// f32 matrices (`Storage::F32`): loads and stores are `vec_t` as they are.
alias mat_t = vec_t;
