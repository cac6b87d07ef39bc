// f16 matrices, scalar loads (`Storage::F16`, `VecWidth::Scalar`): loads
// convert to f32 arithmetic, stores convert back. Needs `SHADER_F16`.
enable f16;
alias mat_t = f16;
