//! Any bytes given to the `.npy` reader: an array or an error, never a panic,
//! a hang or an allocation beyond what the file's own size justifies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(array) = wgpu_loss_cli::io::read_npy_bytes(data, "fuzz.npy") {
        // What was read must be consistent with its declared shape.
        let count: usize = array.shape.iter().product();
        assert_eq!(count, array.len());
        assert!(array.len() <= data.len());
    }
});
