// f16 matrices, vec4 loads (`Storage::F16`, `VecWidth::Vec4`): loads
// convert to f32 arithmetic, stores convert back. Needs `SHADER_F16`.
enable f16;
alias mat_t = vec4<f16>;
