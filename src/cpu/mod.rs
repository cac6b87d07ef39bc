//! CPU paths. [`reference`] is the f64 oracle every GPU result is checked
//! against; [`fast`] is the multi-threaded f32 path `bench` races the GPU with.

pub mod fast;
pub mod reference;
