//! Any bytes given to the `.safetensors` reader, with and without a tensor
//! name: an array or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for name in [None, Some("x")] {
        if let Ok(array) = wgpu_loss_cli::io::read_safetensors_bytes(data, name, "fuzz.safetensors") {
            let count: usize = array.shape.iter().product();
            assert_eq!(count, array.len());
        }
    }
});
