//! CPU paths. [`reference`] is the f64 oracle every GPU result is checked against.

pub mod reference;
